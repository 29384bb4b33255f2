//! The co-signer's configuration file. Secrets never sit in it: the master key is a sealed
//! key file, its passphrase comes from a file or an environment variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vigil_policy::bitcoin::Network;
use vigil_tower::config::{AlarmConfig, ChainConfig, StoreConfig};

use crate::error::CosignerError;

/// Blocks an approval stays valid for an unvault to confirm in, by default (a day).
pub const APPROVAL_EXPIRY_BLOCKS: u32 = 144;
/// The shortest: the owner's client sends no unvault in an approval's last 3 blocks.
pub const MIN_APPROVAL_EXPIRY_BLOCKS: u32 = 4;
/// Blocks a loosening change or an early lift waits at the least: longer than any captivity.
pub const MIN_GOVERNANCE_DELAY_BLOCKS: u32 = 1_009;

/// `vigil cosigner --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosignerConfig {
    /// Where the API listens (put TLS in front of it: docs/cosigner.md).
    pub listen: SocketAddr,
    /// Where `/metrics` is served, for the operator alone; none: it is not served. Never on
    /// the API's address: what moves when a client is alarmed must not be public (a captor
    /// reading it as the owner unlocks would tell a duress code from the real one).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// The SQLite store lives here.
    pub datadir: PathBuf,
    /// The sealed master key (`vigil cosigner init`).
    pub key_file: PathBuf,
    /// A file whose first line is the key's passphrase (mode 0600)...
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    /// ...or the environment variable holding it.
    #[serde(default)]
    pub passphrase_env: Option<String>,
    /// The network every client's policy must be on.
    pub network: String,
    /// Blocks an approval waits for its unvault to confirm.
    #[serde(default = "default_expiry")]
    pub approval_expiry_blocks: u32,
    /// Blocks a loosening policy change or an early lockdown lift waits.
    #[serde(default = "default_governance")]
    pub governance_delay_blocks: u32,
    /// Seconds after an unlock's heartbeat the owner's vault and spend requests are served.
    #[serde(default = "default_heartbeat_fresh")]
    pub heartbeat_fresh_secs: u64,
    /// How long a tower may keep refusing an order (a 4xx other than 401, or an enrollment's
    /// 401) before it is settled for that tower with a `tower-refused` alarm instead of being
    /// sent forever.
    /// Refusals that pass with time (a nonce race, a tower not yet enrolled, a proxy's) clear
    /// well within it.
    #[serde(default = "default_give_up")]
    pub tower_refusal_give_up_secs: u64,
    /// The chain (a node, for heights and confirmations).
    pub chain: ChainConfig,
    /// Where requests and decisions are recorded.
    #[serde(default)]
    pub store: StoreConfig,
    /// Where guardians' alarms go, besides each client's own.
    #[serde(default)]
    pub alarms: AlarmConfig,
    /// The mail relay alarms are e-mailed through, to each client's guardians.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// Which webhooks of their own clients may name for their alarms (their guardians'):
    /// "https" (the default), "any" (plain http too: a co-signer its family runs itself, or
    /// tests on loopback) or "off".
    #[serde(default = "default_client_webhooks")]
    pub client_webhooks: String,
}

fn default_client_webhooks() -> String {
    "https".into()
}

/// How alarms are e-mailed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// The relay's host name.
    pub host: String,
    /// Its port (25, 465 with `tls = "tls"`, 587 with `"starttls"`).
    pub port: u16,
    /// "starttls" (the default), "tls", or "none" (a relay on this machine only).
    #[serde(default = "default_tls")]
    pub tls: String,
    /// The sender address.
    pub from: String,
    /// A user name, when the relay asks for one...
    #[serde(default)]
    pub user: Option<String>,
    /// ...and the environment variable holding its password.
    #[serde(default)]
    pub password_env: Option<String>,
}

fn default_tls() -> String {
    "starttls".into()
}

/// How long after an unlock's heartbeat the owner's vault and spend requests are served, by
/// default (`heartbeat_fresh_secs`). The heartbeat is the duress alarm's channel: a network
/// that dropped it (and only it) would leave the alarm unsent, so without a recent one those
/// requests wait for an unlock whose heartbeat arrives.
pub const HEARTBEAT_FRESH_SECS: u64 = 15 * 60;

fn default_heartbeat_fresh() -> u64 {
    HEARTBEAT_FRESH_SECS
}

/// A day: see [`CosignerConfig::tower_refusal_give_up_secs`].
pub const TOWER_REFUSAL_GIVE_UP_SECS: u64 = 24 * 60 * 60;

fn default_give_up() -> u64 {
    TOWER_REFUSAL_GIVE_UP_SECS
}

fn default_expiry() -> u32 {
    APPROVAL_EXPIRY_BLOCKS
}

fn default_governance() -> u32 {
    MIN_GOVERNANCE_DELAY_BLOCKS
}

fn refuse(field: &str, reason: impl Into<String>) -> CosignerError {
    CosignerError::Config { field: field.into(), reason: reason.into() }
}

impl CosignerConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<CosignerConfig, CosignerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| refuse("--config", format!("{}: {e}", path.display())))?;
        CosignerConfig::parse(&text)
    }

    /// Parses and checks a configuration's text: anything that cannot work is refused here,
    /// naming the field, before anything is created.
    pub fn parse(text: &str) -> Result<CosignerConfig, CosignerError> {
        let config: CosignerConfig = toml::from_str(text).map_err(|e| refuse("(file)", e.to_string()))?;
        config.network()?;
        match (&config.passphrase_file, &config.passphrase_env) {
            (None, None) => {
                return Err(refuse(
                    "passphrase_file",
                    "give passphrase_file or passphrase_env to unlock key_file",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(refuse("passphrase_env", "give passphrase_file or passphrase_env, not both"))
            }
            _ => {}
        }
        if config.metrics_listen == Some(config.listen) {
            return Err(refuse(
                "metrics_listen",
                "the operator's metrics are served apart from the API, not on `listen`",
            ));
        }
        if config.heartbeat_fresh_secs == 0 {
            return Err(refuse("heartbeat_fresh_secs", "at least 1 second"));
        }
        if config.approval_expiry_blocks < MIN_APPROVAL_EXPIRY_BLOCKS {
            return Err(refuse(
                "approval_expiry_blocks",
                format!(
                    "at least {MIN_APPROVAL_EXPIRY_BLOCKS} blocks: the owner's client sends no unvault within 3 \
                     blocks of the expiry, so a shorter one could never be used"
                ),
            ));
        }
        if config.governance_delay_blocks < MIN_GOVERNANCE_DELAY_BLOCKS {
            return Err(refuse(
                "governance_delay_blocks",
                format!(
                    "{} blocks is shorter than a captivity can last; at least {MIN_GOVERNANCE_DELAY_BLOCKS}",
                    config.governance_delay_blocks
                ),
            ));
        }
        // The towers apply a change from the co-signer's height, up to this far ahead.
        let max = vigil_tower::client::MAX_GOVERNANCE_DELAY_BLOCKS;
        if config.governance_delay_blocks > max {
            return Err(refuse(
                "governance_delay_blocks",
                format!(
                    "{} blocks is more than the towers take; at most {max}",
                    config.governance_delay_blocks
                ),
            ));
        }
        if !["https", "any", "off"].contains(&config.client_webhooks.as_str()) {
            return Err(refuse(
                "client_webhooks",
                format!("{:?}: \"https\", \"any\" or \"off\"", config.client_webhooks),
            ));
        }
        if let Some(smtp) = &config.smtp {
            if !["starttls", "tls", "none"].contains(&smtp.tls.as_str()) {
                return Err(refuse("smtp.tls", format!("{:?}: \"starttls\", \"tls\" or \"none\"", smtp.tls)));
            }
            let loopback = smtp.host == "localhost"
                || smtp.host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
            if smtp.tls == "none" && !loopback {
                return Err(refuse(
                    "smtp.tls",
                    "\"none\" sends alarms in the clear: only to a relay on this machine",
                ));
            }
            if smtp.from.parse::<lettre::message::Mailbox>().is_err() {
                return Err(refuse("smtp.from", format!("{:?} is not an e-mail address", smtp.from)));
            }
            if smtp.user.is_some() != smtp.password_env.is_some() {
                return Err(refuse("smtp.password_env", "give user and password_env together"));
            }
        }
        Ok(config)
    }

    /// The network, parsed.
    pub fn network(&self) -> Result<Network, CosignerError> {
        match self.network.as_str() {
            "bitcoin" | "mainnet" => Ok(Network::Bitcoin),
            "testnet" => Ok(Network::Testnet),
            "testnet4" => Ok(Network::Testnet4),
            "signet" => Ok(Network::Signet),
            "regtest" => Ok(Network::Regtest),
            other => Err(refuse("network", format!("unknown network {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        listen = "127.0.0.1:7420"
        datadir = "/tmp/x"
        key_file = "/tmp/x/key"
        passphrase_env = "VIGIL_PASSPHRASE"
        network = "regtest"
        [chain]
        url = "http://127.0.0.1:18443"
        user = "u"
        password = "p"
    "#;

    #[test]
    fn a_configuration_that_cannot_work_is_refused_naming_the_field() {
        assert!(CosignerConfig::parse(GOOD).is_ok());
        let cases = [
            (GOOD.replace("regtest", "moon"), "network"),
            (GOOD.replace("passphrase_env = \"VIGIL_PASSPHRASE\"", ""), "passphrase_file"),
            (GOOD.replace("network =", "governance_delay_blocks = 10\nnetwork ="), "governance_delay_blocks"),
            (
                GOOD.replace("network =", "governance_delay_blocks = 13105\nnetwork ="),
                "governance_delay_blocks",
            ),
            (GOOD.replace("network =", "approval_expiry_blocks = 0\nnetwork ="), "approval_expiry_blocks"),
            (GOOD.replace("network =", "approval_expiry_blocks = 3\nnetwork ="), "approval_expiry_blocks"),
            (GOOD.replace("network =", "secret = \"x\"\nnetwork ="), "secret"),
            (GOOD.replace("network =", "metrics_listen = \"127.0.0.1:7420\"\nnetwork ="), "metrics_listen"),
            (
                format!(
                    "{GOOD}[smtp]\nhost = \"mail.example\"\nport = 25\ntls = \"none\"\nfrom = \"a@b.c\"\n"
                ),
                "smtp.tls",
            ),
            (format!("{GOOD}[smtp]\nhost = \"127.0.0.1\"\nport = 25\nfrom = \"nobody\"\n"), "smtp.from"),
        ];
        for (text, field) in cases {
            let e = CosignerConfig::parse(&text).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
