//! The tower's configuration file, typed: a configuration that cannot work is refused at
//! start, naming the field, before anything is created.
//!
//! Secrets never sit in it: the tower's identity key and its fee-wallet key are read from key
//! files that only their owner may read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vigil_policy::bitcoin::secp256k1::SecretKey;

use crate::error::TowerError;

/// Blocks remembered for reorgs by default.
pub const FOLLOW_DEPTH: usize = 1_000;

/// Vaults one client may register by default: a household has a handful, a treasury
/// hundreds; the cap keeps one client's key from filling a tower with decoys.
pub const MAX_VAULTS_PER_CLIENT: u32 = 10_000;

/// The tower's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TowerConfig {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// Where the store lives.
    pub datadir: PathBuf,
    /// The file holding the tower's identity secret key (64 hex characters, mode 0600); it
    /// signs acknowledgements, and requests are bound to its public key.
    pub key_file: PathBuf,
    /// How often to poll the chain, ms.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
    /// After this long without the chain backend, alarm that vaults are at risk, s.
    #[serde(default = "default_outage")]
    pub outage_alarm_secs: u64,
    /// Blocks remembered for reorgs; a deeper reorg halts block processing with an alarm.
    #[serde(default = "default_follow_depth")]
    pub follow_depth: usize,
    /// Vaults one client may register.
    #[serde(default = "default_max_vaults")]
    pub max_vaults_per_client: u32,
    /// Under a duress (quiet) lockdown, an approved unvault is cancelled this many blocks
    /// before its spend leaf opens (ADR 0003).
    #[serde(default = "default_duress_margin")]
    pub duress_margin_blocks: u32,
    /// The chain backend.
    pub chain: ChainConfig,
    /// Clients to pin at start, each a policy file (new ones are pinned, known ones keep
    /// the policy the store holds for them).
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Alarm delivery.
    #[serde(default)]
    pub alarms: AlarmConfig,
    /// Where decisions are recorded.
    #[serde(default)]
    pub store: StoreConfig,
    /// The fee wallet for anchor bumps (optional: without it the ladder is all there is).
    #[serde(default)]
    pub fee_wallet: Option<FeeWalletConfig>,
}

fn default_poll() -> u64 {
    200
}

fn default_outage() -> u64 {
    60
}

fn default_follow_depth() -> usize {
    FOLLOW_DEPTH
}

fn default_duress_margin() -> u32 {
    crate::watch::DURESS_MARGIN_BLOCKS
}

fn default_max_vaults() -> u32 {
    MAX_VAULTS_PER_CLIENT
}

/// The chain backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawChain")]
pub enum ChainConfig {
    /// Bitcoin Core (or `vigil node`) over JSON-RPC.
    Bitcoind {
        /// `http://127.0.0.1:8332`.
        url: String,
        /// How to authenticate.
        auth: RpcAuth,
        /// Fetch blocks through Core's REST interface (bitcoind started with `-rest`).
        rest: bool,
        /// Where the node publishes ZMQ `sequence` (or `hashblock` and `hashtx`): the tower
        /// steps as soon as a notification arrives, and still polls (ZMQ may drop messages).
        zmq: Option<String>,
    },
    /// An Electrum server (electrs, Fulcrum), `127.0.0.1:50001`.
    Electrum {
        /// `host:port`.
        url: String,
    },
}

/// Credentials for Core's RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcAuth {
    /// `rpcuser` / `rpcpassword`.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// The `.cookie` file the node writes in its data directory when it has no password.
    Cookie(PathBuf),
}

/// Which chain backend: a serde enum, so an unknown one is refused while parsing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainKind {
    /// Bitcoin Core's JSON-RPC (the default).
    #[default]
    Bitcoind,
    /// The Electrum protocol.
    Electrum,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChain {
    #[serde(default)]
    kind: ChainKind,
    url: String,
    user: Option<String>,
    password: Option<String>,
    cookie_file: Option<PathBuf>,
    #[serde(default)]
    rest: bool,
    zmq: Option<String>,
}

impl TryFrom<RawChain> for ChainConfig {
    type Error = String;

    fn try_from(raw: RawChain) -> Result<Self, String> {
        match raw.kind {
            ChainKind::Bitcoind => {
                let auth = match (raw.user, raw.password, raw.cookie_file) {
                    (Some(user), Some(password), None) if !password.is_empty() => {
                        RpcAuth::UserPassword { user, password }
                    }
                    (None, None, Some(path)) => RpcAuth::Cookie(path),
                    _ => {
                        return Err("chain: give `user` and a non-empty `password`, or `cookie_file` \
                                    (the node's .cookie), not both"
                            .into())
                    }
                };
                Ok(ChainConfig::Bitcoind { url: raw.url, auth, rest: raw.rest, zmq: raw.zmq })
            }
            ChainKind::Electrum => {
                let extra = [
                    ("user", raw.user.is_some()),
                    ("password", raw.password.is_some()),
                    ("cookie_file", raw.cookie_file.is_some()),
                    ("rest", raw.rest),
                    ("zmq", raw.zmq.is_some()),
                ];
                if let Some((name, _)) = extra.iter().find(|(_, set)| *set) {
                    return Err(format!("chain.{name}: an Electrum backend has no {name}"));
                }
                Ok(ChainConfig::Electrum { url: raw.url })
            }
        }
    }
}

/// Where decisions are recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawStore")]
pub enum StoreConfig {
    /// One SQLite file in the data directory (the default).
    #[default]
    Sqlite,
    /// A PostgreSQL schema.
    Postgres {
        /// A libpq connection string.
        url: String,
        /// The schema (created if missing).
        schema: String,
    },
}

/// Which store: a serde enum, so an unknown one is refused while parsing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// SQLite (the default).
    #[default]
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    kind: StoreKind,
    url: Option<String>,
    schema: Option<String>,
}

impl TryFrom<RawStore> for StoreConfig {
    type Error = String;

    fn try_from(raw: RawStore) -> Result<Self, String> {
        match raw.kind {
            StoreKind::Sqlite if raw.url.is_some() || raw.schema.is_some() => {
                Err("store: url and schema are for PostgreSQL; SQLite lives in datadir".into())
            }
            StoreKind::Sqlite => Ok(StoreConfig::Sqlite),
            StoreKind::Postgres => {
                let url = raw.url.ok_or("store.url: needed for postgres")?;
                let schema = raw.schema.unwrap_or_else(|| "vigil_tower".into());
                if schema.is_empty() || !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("store.schema: {schema:?}: letters, digits and _ only"));
                }
                Ok(StoreConfig::Postgres { url, schema })
            }
        }
    }
}

/// A client pinned at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The client's policy file: its sha256 is the client's id.
    pub policy: PathBuf,
}

/// Where alarms go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// Webhook URLs, each POSTed every alarm as JSON, each on its own: a dead or slow one
    /// never delays another.
    #[serde(default)]
    pub webhooks: Vec<String>,
}

/// The fee wallet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeWalletConfig {
    /// The file holding its secret key (64 hex characters, mode 0600). It only ever holds
    /// fee money.
    pub key_file: PathBuf,
    /// The package feerate it must be able to reach for every open vault at once, sat/vB;
    /// above every client's top ladder rung, or it could not pay beyond the ladder.
    #[serde(default = "default_stress")]
    pub stress_sat_per_vb: u64,
    /// The package feerate a bump aims for, sat/vB.
    #[serde(default = "default_bump")]
    pub bump_sat_per_vb: u64,
}

fn default_stress() -> u64 {
    500
}

fn default_bump() -> u64 {
    50
}

/// Loads a configuration file.
pub fn load_config(path: &Path) -> Result<TowerConfig, TowerError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| TowerError::ConfigRead { path: path.to_owned(), source })?;
    parse_config(&text)
}

/// Parses a configuration's text.
pub fn parse_config(text: &str) -> Result<TowerConfig, TowerError> {
    // Keys used to sit in the file; say where they go now rather than "unknown field".
    if let Ok(toml::Value::Table(t)) = text.parse::<toml::Value>() {
        let inline =
            t.contains_key("secret_key") || t.get("fee_wallet").and_then(|f| f.get("secret_key")).is_some();
        if inline {
            return Err(TowerError::Config {
                field: "secret_key".into(),
                reason: "secret keys do not belong in the configuration file: put each in a key \
                         file only its owner can read (chmod 600) and name it in `key_file`"
                    .into(),
            });
        }
    }
    let config: TowerConfig = toml::from_str(text)?;
    if config.duress_margin_blocks < crate::watch::MIN_DURESS_MARGIN_BLOCKS {
        return Err(TowerError::Config {
            field: "duress_margin_blocks".into(),
            reason: format!(
                "{} blocks leaves a cancel no time to be buried before the spend leaf opens; at least {}",
                config.duress_margin_blocks,
                crate::watch::MIN_DURESS_MARGIN_BLOCKS
            ),
        });
    }
    let hooks = &config.alarms.webhooks;
    if let Some(twice) = hooks.iter().enumerate().find_map(|(i, h)| hooks[..i].contains(h).then_some(h)) {
        return Err(TowerError::Config {
            field: "alarms.webhooks".into(),
            reason: format!("{twice} is listed twice: each endpoint once"),
        });
    }
    Ok(config)
}

/// Reads a secret key from `path`: 64 hex characters, in a file neither its group nor others
/// may read (as ssh does for private keys).
pub fn read_key_file(path: &Path) -> Result<SecretKey, TowerError> {
    use std::os::unix::fs::PermissionsExt;
    let refuse = |reason: String| TowerError::KeyFile { path: path.to_owned(), reason };
    let meta = std::fs::metadata(path).map_err(|e| refuse(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "mode {mode:o} lets its group or others read it; `chmod 600` it (only its owner may)"
        )));
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| refuse(e.to_string()))?);
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    vigil_policy::bitcoin::hex::FromHex::from_hex(text.trim())
        .map(|b: [u8; 32]| *bytes = b)
        .map_err(|_| refuse("not a 32-byte secret key in hex (64 characters)".into()))?;
    SecretKey::from_slice(&bytes[..]).map_err(|_| refuse("not a valid secp256k1 secret key".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen = \"127.0.0.1:0\"\ndatadir = \"/tmp/x\"\nkey_file = \"/tmp/k\"\n";

    fn parse(rest: &str) -> Result<TowerConfig, String> {
        parse_config(&format!("{BASE}{rest}")).map_err(|e| e.to_string())
    }

    #[test]
    fn chain_and_store_kinds_are_typed() {
        let c = parse("[chain]\nurl = \"http://h\"\nuser = \"u\"\npassword = \"p\"\n").unwrap();
        assert!(matches!(c.chain, ChainConfig::Bitcoind { rest: false, .. }));
        assert_eq!(c.store, StoreConfig::Sqlite);
        let c =
            parse("[chain]\nkind = \"electrum\"\nurl = \"h:1\"\n[store]\nkind = \"postgres\"\nurl = \"x\"\n")
                .unwrap();
        assert_eq!(c.chain, ChainConfig::Electrum { url: "h:1".into() });
        assert_eq!(c.store, StoreConfig::Postgres { url: "x".into(), schema: "vigil_tower".into() });
        for (bad, needle) in [
            ("[chain]\nkind = \"esplora\"\nurl = \"h\"\n", "unknown variant `esplora`"),
            ("[chain]\nkind = \"electrum\"\nurl = \"h\"\nrest = true\n", "chain.rest"),
            ("[chain]\nurl = \"h\"\nuser = \"u\"\npassword = \"\"\n", "non-empty `password`"),
            ("[chain]\nurl = \"h\"\n", "cookie_file"),
            ("[chain]\nurl = \"h\"\ncookie_file = \"c\"\n[store]\nkind = \"mysql\"\n", "unknown variant `mysql`"),
            ("[chain]\nurl = \"h\"\ncookie_file = \"c\"\n[store]\nkind = \"postgres\"\n", "store.url"),
            ("[chain]\nurl = \"h\"\ncookie_file = \"c\"\n[store]\nkind = \"postgres\"\nurl = \"x\"\nschema = \"a;b\"\n", "store.schema"),
            ("[chain]\nurl = \"h\"\ncookie_file = \"c\"\n[alarms]\nwebhooks = [\"http://a\", \"http://a\"]\n", "listed twice"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn inline_secret_keys_are_refused_with_where_they_go() {
        let e = parse_config(&format!(
            "secret_key = \"{}\"\n{BASE}[chain]\nurl = \"h\"\ncookie_file = \"c\"\n",
            "11".repeat(32)
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("key file"), "{e}");
    }

    #[test]
    fn key_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\n", "11".repeat(32))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&path).unwrap().secret_bytes(), [0x11; 32]);
        std::fs::write(&path, "not a key").unwrap();
        assert!(read_key_file(&path).unwrap_err().to_string().contains("64 characters"));
    }
}
