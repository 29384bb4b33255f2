//! The custody policy file (TOML) and its validation into a [`Policy`].
//!
//! Every refusal names the field and the reason, so a user can fix the file without reading
//! code. Validation is all-or-nothing: a [`Policy`] only exists if every rule holds.

use std::collections::HashSet;
use std::str::FromStr;

use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, Xpub};
use bitcoin::secp256k1::{All, PublicKey, Secp256k1};
use bitcoin::{Address, Network, NetworkKind};
use serde::Deserialize;

use crate::error::PolicyError;

/// The largest relative timelock a CSV/nSequence can express, in blocks.
pub const MAX_RELATIVE_LOCK: u32 = 65_535;
/// The longest velocity window, blocks (about a year).
pub const MAX_VELOCITY_WINDOW_BLOCKS: u32 = 52_560;

/// The most towers a policy names: any one of them suffices to cancel, and the co-signer
/// asks each of them at once (a connection, and a thread, per tower) for every order.
pub const MAX_TOWERS: usize = 16;
/// The largest policy file, bytes. Every request that carries one (pinning it, a change, a
/// tower's enrollment) must fit the servers' body limits with the text JSON-escaped, which can
/// double it: at this size it does, with room to spare, in the co-signer's 128 KiB.
pub const MAX_POLICY_BYTES: usize = 56 * 1024;
/// The most whitelisted destinations a policy names (each some 70 bytes of the file).
pub const MAX_WHITELIST: usize = 500;
/// The dust threshold of a P2TR output at Core's dust relay feerate, in sat.
pub const P2TR_DUST_SAT: u64 = 330;
/// The shortest DELAY a policy may have outside regtest: ADR 0002's confirmation budget (a
/// cancel climbing its ladder a rung per block, then anchor bumps) plus the 6-block burial
/// margin. Below it a tower has no margin left to get a cancel confirmed.
pub const MIN_PUBLIC_DELAY_BLOCKS: u16 = 36;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    version: u32,
    #[serde(default = "first_format")]
    format: u32,
    network: String,
    owner: OwnerSection,
    cosigner: CosignerSection,
    guardians: GuardianSection,
    delays: DelaySection,
    fees: FeeSection,
    allowance: AllowanceSection,
    #[serde(default)]
    towers: Vec<TowerSection>,
}

fn first_format() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerSection {
    threshold: u32,
    keys: Vec<String>,
    #[serde(default)]
    auth_keys: Vec<String>,
    backup: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CosignerSection {
    key: String,
    #[serde(default)]
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardianSection {
    threshold: u32,
    keys: Vec<String>,
    #[serde(default)]
    auth_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DelaySection {
    unvault: i64,
    recovery: i64,
    deep_vault: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeeSection {
    unvault_sat_per_vb: u64,
    ladder_sat_per_vb: Vec<u64>,
    max_fee_percent: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowanceSection {
    hot_limit_sat: u64,
    velocity_limit_sat: u64,
    velocity_window_blocks: u32,
    #[serde(default)]
    spend_limit_sat: Option<u64>,
    #[serde(default)]
    whitelist: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TowerSection {
    name: String,
    url: String,
    key: String,
}

/// An extended public key from the policy, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyKey {
    /// The account-level extended public key.
    pub xpub: Xpub,
    /// Master fingerprint and path to `xpub`, when the file gives them (`[fp/path]xpub`).
    pub origin: Option<(Fingerprint, DerivationPath)>,
    /// The party's request-signing key when the policy names it (`auth_keys`); otherwise it
    /// is `xpub/2/0`.
    pub auth: Option<bitcoin::key::XOnlyPublicKey>,
}

/// How a policy's outputs derive their keys (ADR 0005).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyFormat {
    /// Format 1: a party's key at `/0/i` (intake) or `/1/i` (vault) in every leaf that names
    /// it, and the literal NUMS point as internal key.
    Shared = 1,
    /// Format 2: each leaf a key sits in has its own derivation branch, and the internal key
    /// is an xpub over the NUMS point, so a hardware signer can register every output as a
    /// BIP-388 wallet policy.
    PerLeaf = 2,
}

/// Which chain of child keys a key contributes to: intake (receive) addresses or vault graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChain {
    /// Intake addresses, one per receive index.
    Intake,
    /// A vault funding's change, back to the intake (format 2 only): the intake's keys on the
    /// change half of their branches, which a hardware signer recognises as its own change.
    IntakeChange,
    /// The unvault, recovery and deep-vault outputs, one set per vault index.
    Vault,
}

impl KeyChain {
    /// The derivation branches of a chain: one for the first leaf a key sits in (and the
    /// internal key), one for the second (ADR 0005's table). Format 1 has one branch.
    pub fn branches(self, format: PolicyFormat) -> [u32; 2] {
        match (format, self) {
            (PolicyFormat::Shared, KeyChain::Intake) => [0, 0],
            (PolicyFormat::Shared, KeyChain::Vault) => [1, 1],
            // Format 1's /1 is the vault chain: its change goes to a receive index.
            (PolicyFormat::Shared, KeyChain::IntakeChange) => [0, 0],
            (PolicyFormat::PerLeaf, KeyChain::Intake) => [0, 4],
            (PolicyFormat::PerLeaf, KeyChain::IntakeChange) => [1, 5],
            (PolicyFormat::PerLeaf, KeyChain::Vault) => [6, 8],
        }
    }
}

/// `/2/0`: the key a party signs requests with, when the policy names none.
const AUTH_BRANCH: u32 = 2;

impl PolicyKey {
    /// The master fingerprint and full path of the child key `branch/index`, for PSBT signers.
    pub fn key_source(&self, branch: u32, index: u32) -> (Fingerprint, DerivationPath) {
        let (fp, base) = match &self.origin {
            Some((fp, path)) => (*fp, path.clone()),
            None => (self.xpub.fingerprint(), DerivationPath::master()),
        };
        let tail = [
            ChildNumber::from_normal_idx(branch).expect("a small branch"),
            ChildNumber::from_normal_idx(index).expect("index < 2^31"),
        ];
        (fp, base.extend(tail))
    }

    /// The key this party authenticates requests with: the one the policy names, else `/2/0`.
    ///
    /// A derived auth key is a non-hardened child of `xpub`, and a non-hardened child's
    /// private key together with the public `xpub` gives the account's private key. So a
    /// device that must authenticate without holding the spending key (the owner's client
    /// under a duress code, a hardware signer's companion) needs a named, independent key.
    pub fn auth_key(&self) -> bitcoin::key::XOnlyPublicKey {
        if let Some(auth) = self.auth {
            return auth;
        }
        let path = [
            ChildNumber::from_normal_idx(AUTH_BRANCH).expect("2"),
            ChildNumber::from_normal_idx(0).expect("0"),
        ];
        self.xpub.derive_pub(secp(), &path).expect("non-hardened derivation").public_key.x_only_public_key().0
    }

    /// The descriptor form of this key on `branch`, ranged (`/*`) or at one index.
    pub fn descriptor_key(&self, branch: u32, index: Option<u32>) -> String {
        let tail = index.map(|i| i.to_string()).unwrap_or_else(|| "*".into());
        format!("{}/{branch}/{tail}", self.key_expression())
    }

    /// The key with its origin and no derivation step: `[fingerprint/path]xpub`, or the
    /// xpub alone when the policy gives no origin (a BIP-388 key information).
    pub fn key_expression(&self) -> String {
        match &self.origin {
            Some((fp, path)) if path.is_empty() => format!("[{fp}]{}", self.xpub),
            Some((fp, path)) => format!("[{fp}/{}]{}", path.to_string().trim_start_matches("m/"), self.xpub),
            None => self.xpub.to_string(),
        }
    }
}

/// A threshold of keys (`threshold` of `keys` must sign).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySet {
    /// How many must sign.
    pub threshold: u32,
    /// The keys.
    pub keys: Vec<PolicyKey>,
}

/// Delays, in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delays {
    /// DELAY: how long an unvault waits before its spend leaf opens (the towers' window).
    pub unvault: u16,
    /// T_RECOVER: when owner + guardians may act without the co-signer.
    pub recovery: u16,
    /// LONG: the deep vault's slow path.
    pub deep_vault: u16,
}

/// The fee strategy of the pre-signed transactions (ADR 0002).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeePolicy {
    /// The unvault's one feerate (it has exactly one version), sat/vB; its anchor bumps it.
    pub unvault_sat_per_vb: u64,
    /// The ladder of feerates signed for each cancel and emergency, sat/vB, increasing.
    pub ladder_sat_per_vb: Vec<u64>,
    /// Rungs costing more than this share of the vault are not signed (the lowest always is).
    pub max_fee_percent: u64,
}

/// Allowance and velocity limits (enforced by co-signer and towers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    /// Most the hot wallet may hold, sat.
    pub hot_limit_sat: u64,
    /// Most all unvaults together may release per window, sat; also the largest standard vault.
    pub velocity_limit_sat: u64,
    /// The velocity window, in blocks.
    pub velocity_window_blocks: u32,
    /// The largest vault spend the co-signer approves without the guardians, sat (at most
    /// the velocity limit, which it defaults to).
    pub spend_limit_sat: u64,
    /// Destinations spends may go to without guardian approval.
    pub whitelist: Vec<Address>,
}

/// A watchtower the vaults are registered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tower {
    /// A name for humans.
    pub name: String,
    /// Where its registration API listens.
    pub url: String,
    /// The key it signs acknowledgements with.
    pub key: PublicKey,
}

/// A validated custody policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The policy's revision, raised by every change (towers pin it).
    pub version: u32,
    /// How its outputs derive their keys.
    pub format: PolicyFormat,
    /// The network every key and address belongs to.
    pub network: Network,
    /// The owner's everyday keys.
    pub owner: KeySet,
    /// The owner's off-site backup key (deep vault only).
    pub backup: PolicyKey,
    /// The co-signer's key.
    pub cosigner: PolicyKey,
    /// Where the co-signer listens.
    pub cosigner_url: Option<String>,
    /// The guardians.
    pub guardians: KeySet,
    /// DELAY, T_RECOVER, LONG.
    pub delays: Delays,
    /// Fees of the pre-signed transactions.
    pub fees: FeePolicy,
    /// Allowance and velocity.
    pub allowance: Allowance,
    /// The towers.
    pub towers: Vec<Tower>,
}

impl Policy {
    /// Whether this policy's towers agree with those of an `earlier` version: a tower's name
    /// is its identity across versions (acknowledgements, orders and alarms name it), so a
    /// name keeps its key and a key its name; a tower may move to another URL. Otherwise a
    /// tower an earlier version named, still watching the vaults made under it, would be
    /// mistaken for another and miss their approvals. Towers named with the same key in
    /// `today` are not checked: a history that broke the rule before it existed does not
    /// freeze every later change.
    pub fn towers_agree_with(&self, earlier: &Policy, today: &Policy) -> Result<(), PolicyError> {
        let kept = |t: &Tower| today.towers.iter().any(|k| k.name == t.name && k.key == t.key);
        for (i, tower) in self.towers.iter().enumerate().filter(|(_, t)| !kept(t)) {
            for before in &earlier.towers {
                let same_key = before.key.x_only_public_key().0 == tower.key.x_only_public_key().0;
                if before.name == tower.name && !same_key {
                    return Err(field(
                        format!("towers[{i}].key"),
                        format!(
                            "{:?} had another key in version {}; give the new tower a name of its own",
                            tower.name, earlier.version
                        ),
                    ));
                }
                if same_key && before.name != tower.name {
                    return Err(field(
                        format!("towers[{i}].name"),
                        format!(
                            "this tower was {:?} in version {}; a tower keeps its name",
                            before.name, earlier.version
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Parses and validates a policy file's text.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text)?;
        validate(file)
    }

    /// Parses a policy offered now, to be pinned or as a change: [`Policy::from_toml`], within
    /// [`MAX_POLICY_BYTES`] and [`MAX_WHITELIST`]. A text pinned before these limits existed
    /// is still read by `from_toml`: a stored policy must never stop parsing.
    pub fn from_new_toml(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge { bytes: text.len(), limit: MAX_POLICY_BYTES });
        }
        let policy = Policy::from_toml(text)?;
        let listed = policy.allowance.whitelist.len();
        if listed > MAX_WHITELIST {
            return Err(field(
                "allowance.whitelist",
                format!("{listed} destinations: at most {MAX_WHITELIST}"),
            ));
        }
        Ok(policy)
    }
}

impl FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::from_toml(s)
    }
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Field { field: field.into(), reason: reason.into() }
}

fn validate(file: PolicyFile) -> Result<Policy, PolicyError> {
    // The policy's revision: each change signed by the guardians raises it (towers pin it).
    if file.version == 0 {
        return Err(field("version", "the first version of a policy is 1"));
    }
    let format = match file.format {
        1 => PolicyFormat::Shared,
        2 => PolicyFormat::PerLeaf,
        other => {
            return Err(field(
                "format",
                format!(
                "unknown format {other} (1: one derivation per key; 2: one per leaf, for hardware signers)"
            ),
            ))
        }
    };
    let network = match file.network.as_str() {
        "bitcoin" | "mainnet" => Network::Bitcoin,
        "testnet" => Network::Testnet,
        "testnet4" => Network::Testnet4,
        "signet" => Network::Signet,
        "regtest" => Network::Regtest,
        other => {
            return Err(field(
                "network",
                format!("unknown network {other:?} (bitcoin, testnet, testnet4, signet, regtest)"),
            ))
        }
    };
    // Keys are compared by their x-only public key alone: the same key re-encoded with another
    // depth, fingerprint or child number is the same signer, and so is one private key under
    // two chain codes, or negated (whoever holds k holds -k, and derives both children) --
    // `multi_a(2, G0, G0', G2)` would let one guardian sign for two.
    let mut seen = HashSet::new();
    let mut key = |name: String, text: &str| -> Result<PolicyKey, PolicyError> {
        let k = parse_key(&name, text, network)?;
        if !seen.insert(k.xpub.public_key.x_only_public_key().0) {
            return Err(field(
                name,
                "the same key appears twice in the policy; every role needs its own key",
            ));
        }
        Ok(k)
    };

    let owner = key_set("owner", file.owner.threshold, &file.owner.keys, &file.owner.auth_keys, 3, &mut key)?;
    let backup = key("owner.backup".into(), &file.owner.backup)?;
    let cosigner = key("cosigner.key".into(), &file.cosigner.key)?;
    let guardians = key_set(
        "guardians",
        file.guardians.threshold,
        &file.guardians.keys,
        &file.guardians.auth_keys,
        7,
        &mut key,
    )?;
    // One auth key per party: a shared one would let one signature count for two parties.
    let named = |section: &str, i: usize, k: &PolicyKey| match k.auth {
        Some(_) => format!("{section}.auth_keys[{i}]"),
        None => format!("{section}.keys[{i}]"),
    };
    let mut parties: Vec<(String, &PolicyKey)> = vec![("cosigner.key".into(), &cosigner)];
    parties.extend(owner.keys.iter().enumerate().map(|(i, k)| (named("owner", i, k), k)));
    parties.extend(guardians.keys.iter().enumerate().map(|(i, k)| (named("guardians", i, k), k)));
    let mut auth_seen = std::collections::HashMap::new();
    for (name, k) in &parties {
        if let Some(other) = auth_seen.insert(k.auth_key(), name) {
            // Name the field the user wrote (an explicit auth key) rather than a derived one.
            let (field_name, clash) = if name.contains("auth_keys") { (name, other) } else { (other, name) };
            return Err(field(
                field_name.as_str(),
                format!("this auth key is {clash}'s too: every party needs its own"),
            ));
        }
    }

    let lock = |name: &str, v: i64| -> Result<u16, PolicyError> {
        if v < 1 {
            return Err(field(name, format!("{v} blocks: a delay must be at least 1 block")));
        }
        if v > MAX_RELATIVE_LOCK as i64 {
            return Err(field(
                name,
                format!("{v} blocks exceeds {MAX_RELATIVE_LOCK}, the most a relative timelock can express"),
            ));
        }
        Ok(v as u16)
    };
    let delays = Delays {
        unvault: lock("delays.unvault", file.delays.unvault)?,
        recovery: lock("delays.recovery", file.delays.recovery)?,
        deep_vault: lock("delays.deep_vault", file.delays.deep_vault)?,
    };
    if network != Network::Regtest && delays.unvault < MIN_PUBLIC_DELAY_BLOCKS {
        return Err(field(
            "delays.unvault",
            format!(
                "{} blocks is below the {MIN_PUBLIC_DELAY_BLOCKS} a tower needs on {network} to get a cancel confirmed \
                 before the spend leaf opens (ADR 0002); only regtest allows shorter",
                delays.unvault
            ),
        ));
    }
    if delays.recovery < delays.unvault {
        return Err(field(
            "delays.recovery",
            format!("{} blocks is shorter than delays.unvault ({}): the recovery leaf would open before the towers' window closes", delays.recovery, delays.unvault),
        ));
    }
    if delays.deep_vault < delays.unvault {
        return Err(field(
            "delays.deep_vault",
            format!("LONG ({} blocks) is shorter than DELAY ({} blocks): the deep vault must be the slowest way out", delays.deep_vault, delays.unvault),
        ));
    }

    let f = &file.fees;
    if !(1..=10_000).contains(&f.unvault_sat_per_vb) {
        return Err(field(
            "fees.unvault_sat_per_vb",
            format!("{} sat/vB is outside 1..=10000", f.unvault_sat_per_vb),
        ));
    }
    if f.ladder_sat_per_vb.is_empty() || f.ladder_sat_per_vb.len() > 32 {
        return Err(field("fees.ladder_sat_per_vb", "needs 1 to 32 feerates"));
    }
    for (i, w) in f.ladder_sat_per_vb.iter().enumerate() {
        if !(1..=10_000).contains(w) {
            return Err(field(
                format!("fees.ladder_sat_per_vb[{i}]"),
                format!("{w} sat/vB is outside 1..=10000"),
            ));
        }
        if i > 0 && *w <= f.ladder_sat_per_vb[i - 1] {
            return Err(field(format!("fees.ladder_sat_per_vb[{i}]"), "the ladder must strictly increase"));
        }
    }
    if !(1..=50).contains(&f.max_fee_percent) {
        return Err(field("fees.max_fee_percent", format!("{}% is outside 1..=50", f.max_fee_percent)));
    }
    let fees = FeePolicy {
        unvault_sat_per_vb: f.unvault_sat_per_vb,
        ladder_sat_per_vb: f.ladder_sat_per_vb.clone(),
        max_fee_percent: f.max_fee_percent,
    };

    let a = &file.allowance;
    let max_money = bitcoin::Amount::MAX_MONEY.to_sat();
    for (name, v) in
        [("allowance.hot_limit_sat", a.hot_limit_sat), ("allowance.velocity_limit_sat", a.velocity_limit_sat)]
    {
        if v <= P2TR_DUST_SAT {
            return Err(field(
                name,
                format!("{v} sat is at or below the dust threshold ({P2TR_DUST_SAT} sat)"),
            ));
        }
        if v > max_money {
            return Err(field(name, format!("{v} sat is more than 21 million BTC")));
        }
    }
    if a.velocity_window_blocks == 0 || a.velocity_window_blocks > MAX_VELOCITY_WINDOW_BLOCKS {
        return Err(field(
            "allowance.velocity_window_blocks",
            format!(
                "{} blocks: the window is 1 to {MAX_VELOCITY_WINDOW_BLOCKS} blocks (a year)",
                a.velocity_window_blocks
            ),
        ));
    }
    let whitelist = a
        .whitelist
        .iter()
        .enumerate()
        .map(|(i, s)| parse_address(&format!("allowance.whitelist[{i}]"), s, network))
        .collect::<Result<Vec<_>, _>>()?;
    let spend_limit_sat = a.spend_limit_sat.unwrap_or(a.velocity_limit_sat);
    if spend_limit_sat > a.velocity_limit_sat {
        return Err(field(
            "allowance.spend_limit_sat",
            format!("{spend_limit_sat} sat is above the velocity limit ({} sat): no spend may release more than a window allows", a.velocity_limit_sat),
        ));
    }
    let allowance = Allowance {
        hot_limit_sat: a.hot_limit_sat,
        velocity_limit_sat: a.velocity_limit_sat,
        velocity_window_blocks: a.velocity_window_blocks,
        spend_limit_sat,
        whitelist,
    };

    if file.towers.len() > MAX_TOWERS {
        return Err(field(
            "towers",
            format!(
                "{} towers: at most {MAX_TOWERS} (any one of them is enough to cancel)",
                file.towers.len()
            ),
        ));
    }
    let mut towers = Vec::new();
    for (i, t) in file.towers.iter().enumerate() {
        let name = |f: &str| format!("towers[{i}].{f}");
        if t.name.trim().is_empty() {
            return Err(field(name("name"), "a tower needs a name"));
        }
        if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
            return Err(field(name("url"), format!("{:?} is not an http(s) URL", t.url)));
        }
        let key = PublicKey::from_str(&t.key)
            .map_err(|e| field(name("key"), format!("not a compressed public key in hex: {e}")))?;
        // Acknowledgements are counted per tower: two entries for one tower would count one
        // acknowledgement twice.
        if towers.iter().any(|o: &Tower| o.name == t.name) {
            return Err(field(name("name"), format!("{:?} names two towers", t.name)));
        }
        if towers.iter().any(|o: &Tower| o.key.x_only_public_key().0 == key.x_only_public_key().0) {
            return Err(field(name("key"), "the same tower is listed twice"));
        }
        towers.push(Tower { name: t.name.clone(), url: t.url.clone(), key });
    }
    Ok(Policy {
        version: file.version,
        format,
        network,
        owner,
        backup,
        cosigner,
        cosigner_url: file.cosigner.url,
        guardians,
        delays,
        fees,
        allowance,
        towers,
    })
}

fn key_set(
    section: &str,
    threshold: u32,
    keys: &[String],
    auth_keys: &[String],
    max: usize,
    key: &mut impl FnMut(String, &str) -> Result<PolicyKey, PolicyError>,
) -> Result<KeySet, PolicyError> {
    if keys.is_empty() || keys.len() > max {
        return Err(field(
            format!("{section}.keys"),
            format!("{} keys given, 1 to {max} allowed", keys.len()),
        ));
    }
    if threshold == 0 || threshold as usize > keys.len() {
        return Err(field(
            format!("{section}.threshold"),
            format!(
                "threshold {threshold} with {} keys: it must be between 1 and the number of keys",
                keys.len()
            ),
        ));
    }
    if !auth_keys.is_empty() && auth_keys.len() != keys.len() {
        return Err(field(
            format!("{section}.auth_keys"),
            format!(
                "{} auth keys for {} keys: give one per key, in the same order, or none",
                auth_keys.len(),
                keys.len()
            ),
        ));
    }
    let mut parsed = keys
        .iter()
        .enumerate()
        .map(|(i, k)| key(format!("{section}.keys[{i}]"), k))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, (k, text)) in parsed.iter_mut().zip(auth_keys).enumerate() {
        let auth = bitcoin::key::XOnlyPublicKey::from_str(text.trim()).map_err(|_| {
            field(format!("{section}.auth_keys[{i}]"), "not an x-only public key (64 hex digits)")
        })?;
        k.auth = Some(auth);
    }
    Ok(KeySet { threshold, keys: parsed })
}

/// Parses `[fingerprint/path]xpub` or a bare `xpub` for `network`.
pub fn parse_key(name: &str, text: &str, network: Network) -> Result<PolicyKey, PolicyError> {
    let text = text.trim();
    let (origin, key) = match text.strip_prefix('[') {
        Some(rest) => {
            let (origin, key) = rest
                .split_once(']')
                .ok_or_else(|| field(name, "unterminated key origin: expected [fingerprint/path]xpub"))?;
            let (fp, path) = origin.split_once('/').unwrap_or((origin, ""));
            let fp = Fingerprint::from_str(fp)
                .map_err(|_| field(name, format!("{fp:?} is not an 8-hex-digit fingerprint")))?;
            let path = if path.is_empty() {
                DerivationPath::master()
            } else {
                DerivationPath::from_str(&format!("m/{path}"))
                    .map_err(|e| field(name, format!("bad origin path: {e}")))?
            };
            (Some((fp, path)), key)
        }
        None => (None, text),
    };
    if key.starts_with("xprv") || key.starts_with("tprv") {
        return Err(field(
            name,
            "this is a private key: a policy names public keys only, and this file may now be a secret",
        ));
    }
    if key.contains('/') || key.contains('*') {
        return Err(field(
            name,
            "give the account-level key without derivation steps: Vigil derives /0/* and /1/* itself",
        ));
    }
    let xpub = Xpub::from_str(key).map_err(|_| {
        field(name, "unknown key format: expected an extended public key (tpub... on test networks, xpub... on mainnet), optionally prefixed by [fingerprint/path]")
    })?;
    let expected = NetworkKind::from(network);
    if xpub.network != expected {
        return Err(field(
            name,
            format!(
                "this key is for {}, the policy is for {network}",
                if xpub.network.is_mainnet() { "mainnet" } else { "a test network" }
            ),
        ));
    }
    Ok(PolicyKey { xpub, origin, auth: None })
}

/// Parses an address and checks its network.
pub fn parse_address(name: &str, text: &str, network: Network) -> Result<Address, PolicyError> {
    let unchecked =
        Address::from_str(text.trim()).map_err(|e| field(name, format!("not an address: {e}")))?;
    unchecked
        .require_network(network)
        .map_err(|_| field(name, format!("{text} is not an address of the policy's network ({network})")))
}

/// One context for the whole process: creating one randomizes it (an elliptic-curve
/// multiplication), too dear to pay per signature or derivation.
pub fn secp() -> &'static Secp256k1<All> {
    static SECP: std::sync::OnceLock<Secp256k1<All>> = std::sync::OnceLock::new();
    SECP.get_or_init(Secp256k1::new)
}
