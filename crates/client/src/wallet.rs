//! The owner's wallet directory: what it holds besides the keystore, and the state the
//! commands share (all public: addresses, coins, vaults, history; the secrets are in the
//! keystore only).
//!
//! | file | holds |
//! | --- | --- |
//! | `keystore`, `keystore.backup`, `unlock.state` | the keys, two codes ([`crate::owner`]) |
//! | `wallet.toml` | the network and the chain backend (`[chain]`, as a tower's) |
//! | `policy.toml` | the pinned policy |
//! | `state.json` | indexes, intake coins, vaults, the policy's changes, history (replaced atomically) |
//! | `nonce` | the request counter |
//!
//! The real and the duress code read and write the same files: nothing here depends on
//! which opened the keystore.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vigil_chain::ChainBackend;
use vigil_policy::bitcoin::{Amount, Network, OutPoint, ScriptBuf, TxOut};
use vigil_policy::{ChangeTo, CompiledPolicy, FundingInput, Policy};
use vigil_tower::config::ChainConfig;

use crate::policies::Policies;

/// How many unused intake addresses past the last handed out are watched.
pub const INTAKE_LOOKAHEAD: u32 = 20;

/// The record of the wallet's hardware signer, when its keys are on one: the device, its
/// registrations, its allowance account.
pub const SIGNER_FILE: &str = "signer.json";

/// Why the wallet directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not parse.
    #[error("{path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The chain backend failed.
    #[error("the chain backend: {0}")]
    Chain(String),
    /// A record names a policy version the wallet has no checked copy of.
    #[error(
        "something in this wallet was made under policy version {0}, which it cannot follow to right now \
         (is the co-signer reachable?); nothing was done"
    )]
    UnknownPolicyVersion(u32),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalletError + '_ {
    move |source| WalletError::Io { path: path.to_owned(), source }
}

/// Writes `bytes` to `path` atomically (a temporary file, synced, renamed over it), readable
/// by its owner alone: the wallet's files hold its node's password, its tokens, and the
/// policy's keys (from which every vault address follows).
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), WalletError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    // A temporary file left by an earlier release keeps its mode through `open`.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    Ok(())
}

/// Creates directory `path` (and its parents) readable by its owner alone.
pub fn create_private_dir(path: &Path) -> Result<(), WalletError> {
    private_dir(path).map_err(io(path))
}

/// [`create_private_dir`], for callers with errors of their own.
pub(crate) fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// `wallet.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalletConfig {
    /// `regtest`, `signet`, `testnet4`, `bitcoin`.
    pub network: String,
    /// Where the wallet reads the chain and broadcasts.
    pub chain: ChainConfig,
}

impl WalletConfig {
    /// The network.
    pub fn network(&self) -> Result<Network, WalletError> {
        self.network.parse::<Network>().map_err(|_| WalletError::Damaged {
            path: "wallet.toml".into(),
            reason: format!("unknown network {:?}", self.network),
        })
    }
}

/// An intake coin the wallet found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntakeCoin {
    /// `txid:vout`.
    pub outpoint: OutPoint,
    /// Its value, sat.
    pub value_sat: u64,
    /// The intake index it was paid to.
    pub intake_index: u32,
    /// On the intake's change branch (a vault funding's change, format 2).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub change: bool,
    /// The block it confirmed in.
    pub height: u32,
    /// Spent (into a vault, usually).
    pub spent: bool,
    /// The policy version whose intake address it was paid to (none: the pinned one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u32>,
}

/// A vault the wallet made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRecord {
    /// V.
    pub outpoint: OutPoint,
    /// V's value, sat.
    pub amount_sat: u64,
    /// "standard" or "guarded".
    pub kind: String,
    /// Its derivation index.
    pub index: u32,
    /// The signed funding, hex (broadcast again until it confirms).
    pub funding: String,
    /// The funding's confirmation height, once seen.
    pub confirmed_height: Option<u32>,
    /// The pre-signed unvault, hex.
    pub unvault: String,
    /// The owner's one-time public key (x-only hex): with the next, rebuilds the descriptors.
    pub owner_once: String,
    /// The co-signer's one-time public key.
    pub cosigner_once: String,
    /// The extended keys the one-time keys are the `/0/index` children of (owner's, then
    /// the co-signer's), when the vault was made with them: a hardware signer registers the
    /// unvault output with them (ADR 0005).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once_xpubs: Option<[String; 2]>,
    /// Spent by an unvault (a spend under way or done).
    #[serde(default)]
    pub unvaulted: bool,
    /// The policy version it was made under, whose scripts it keeps (none: the pinned one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u32>,
}

impl VaultRecord {
    /// The vault's plan, rebuilt from the record.
    pub fn plan(&self) -> Option<vigil_policy::VaultPlan> {
        use std::str::FromStr;
        Some(vigil_policy::VaultPlan {
            index: self.index,
            amount: Amount::from_sat(self.amount_sat),
            kind: if self.kind == "guarded" {
                vigil_policy::VaultKind::Guarded
            } else {
                vigil_policy::VaultKind::Standard
            },
            owner_once: vigil_policy::bitcoin::key::XOnlyPublicKey::from_str(&self.owner_once).ok()?,
            cosigner_once: vigil_policy::bitcoin::key::XOnlyPublicKey::from_str(&self.cosigner_once).ok()?,
        })
    }
}

/// A vault ceremony whose owner half was signed and sent but not yet recorded as a vault:
/// on the next run the co-signer is asked whether it holds it (then it is finished from this
/// record) or not (then nothing was funded and the record is dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingVault {
    /// V.
    pub outpoint: OutPoint,
    /// Its index.
    pub index: u32,
    /// V's value, sat.
    pub amount_sat: u64,
    /// "standard" or "guarded".
    pub kind: String,
    /// The owner's one-time public key.
    pub owner_once: String,
    /// The co-signer's.
    pub cosigner_once: String,
    /// The owner's one-time key's signatures over the graph, hex.
    pub owner_signatures: Vec<String>,
    /// The co-signer's.
    pub cosigner_signatures: Vec<String>,
    /// The funding, unsigned, hex (its txid is V's).
    pub unsigned_funding: String,
    /// As [`VaultRecord::once_xpubs`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once_xpubs: Option<[String; 2]>,
    /// The funding's PSBT, base64, while it waits for a signature from elsewhere (`vigil vault
    /// --sign-elsewhere`); none once the owner's half was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsigned_psbt: Option<String>,
    /// The policy version the ceremony built it under (none: the pinned one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u32>,
}

impl PendingVault {
    /// The vault's record, once it is made (its funding and unvault are filled in then).
    pub fn record(&self) -> VaultRecord {
        VaultRecord {
            outpoint: self.outpoint,
            amount_sat: self.amount_sat,
            kind: self.kind.clone(),
            index: self.index,
            funding: String::new(),
            confirmed_height: None,
            unvault: String::new(),
            owner_once: self.owner_once.clone(),
            cosigner_once: self.cosigner_once.clone(),
            once_xpubs: self.once_xpubs.clone(),
            unvaulted: false,
            policy_version: self.policy_version,
        }
    }
}

/// A vault spend under way: request → approvals → unvault → DELAY → co-signed spend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSpend {
    /// The co-signer's request id (0 until it answered).
    pub id: u64,
    /// The vault it spends.
    pub vault: OutPoint,
    /// Where to.
    pub destination: String,
    /// How much, sat.
    pub amount_sat: u64,
    /// The request: the spend PSBT the owner signed (base64), sent again as it is if the
    /// answer was lost, so the co-signer sees the same request.
    pub psbt: String,
    /// "unsigned" (its PSBT with a signer elsewhere), "requesting", "asking again" (the same
    /// spend, its unvault out and its approval no longer usable), "waiting" (for guardians),
    /// "approved", "unvault sent", "signed",
    /// "sent", "done", "denied", "cancelled", "expired" (its approval, before the unvault
    /// was sent or the guardians' quorum).
    pub stage: String,
    /// The co-signed payment, hex, once the co-signer signed it (broadcast until it confirms).
    pub tx: Option<String>,
    /// The tip when it was first found approved with a tower that had not acknowledged the
    /// approval: its unvault waits a while for that tower ([`crate::spending`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub towers_awaited_since: Option<u32>,
}

impl PendingSpend {
    /// Whether it still needs something done.
    pub fn active(&self) -> bool {
        !["done", "denied", "cancelled", "expired"].contains(&self.stage.as_str())
    }
}

/// A recovery through the recovery leaves (`vigil recover`): prepared, handed to the
/// guardians, then finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecovery {
    /// The unsigned transaction's id: a PSBT brought back must be this one.
    pub unsigned_txid: String,
    /// Where the coins go.
    pub destination: String,
    /// What arrives there, sat.
    pub amount_sat: u64,
    /// The coins it moves.
    pub coins: Vec<OutPoint>,
    /// The finished transaction, hex, once the guardians signed (broadcast until it confirms).
    pub tx: Option<String>,
    /// It spends the deep vault through its fast path: the co-signer signs last.
    #[serde(default)]
    pub cosigner_signs: bool,
}

/// One line of history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix time.
    pub time: u64,
    /// What happened, in words.
    pub what: String,
}

/// `state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletState {
    /// The height the wallet was made at (scanning starts there).
    pub birth_height: u32,
    /// The next intake index to hand out.
    pub next_intake: u32,
    /// The next index of the intake's change branch (format 2), where a vault funding's
    /// change goes: the vault's own index, so the vault count bounds it too (a restore, or a
    /// state an earlier release saved without it).
    #[serde(default)]
    pub next_change: u32,
    /// The next vault index.
    pub next_vault: u32,
    /// Blocks scanned up to (inclusive).
    pub scanned_height: u32,
    /// Intake coins found.
    pub coins: Vec<IntakeCoin>,
    /// Vaults made.
    pub vaults: Vec<VaultRecord>,
    /// A ceremony sent but not yet recorded.
    #[serde(default)]
    pub pending_vault: Option<PendingVault>,
    /// Vault spends, oldest first.
    #[serde(default)]
    pub spends: Vec<PendingSpend>,
    /// A recovery without the co-signer, prepared for the guardians to sign.
    #[serde(default)]
    pub recovery: Option<PendingRecovery>,
    /// The end of the latest lockdown the owner asked for (shown by `vigil status`).
    #[serde(default)]
    pub lockdown_until: Option<u32>,
    /// The guardians' signed changes to the pinned policy, as last checked
    /// ([`crate::policies`]): kept with the records that name their versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_changes: Option<vigil_cosigner::wire::PolicyChanges>,
    /// What happened, oldest first.
    pub history: Vec<Event>,
}

/// The wallet directory.
#[derive(Debug, Clone)]
pub struct WalletDir {
    /// Where it is.
    pub path: PathBuf,
}

impl WalletDir {
    /// The directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> WalletDir {
        WalletDir { path: path.into() }
    }

    /// A file in it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// `wallet.toml`.
    pub fn config(&self) -> Result<WalletConfig, WalletError> {
        let path = self.file("wallet.toml");
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        toml::from_str(&text).map_err(|e| WalletError::Damaged { path, reason: e.to_string() })
    }

    /// The pinned policy's text.
    pub fn policy_text(&self) -> Result<String, WalletError> {
        let path = self.file("policy.toml");
        std::fs::read_to_string(&path).map_err(io(&path))
    }

    /// The pinned policy, compiled.
    pub fn policy(&self) -> Result<CompiledPolicy, WalletError> {
        let path = self.file("policy.toml");
        let damaged =
            |e: vigil_policy::PolicyError| WalletError::Damaged { path: path.clone(), reason: e.to_string() };
        CompiledPolicy::new(Policy::from_toml(&self.policy_text()?).map_err(damaged)?).map_err(damaged)
    }

    /// The allowance's account on the wallet's hardware signer (`signer.json`, kept by the
    /// signer commands), when the device holds the allowance.
    pub fn allowance_on_signer(&self) -> Result<Option<String>, WalletError> {
        #[derive(Deserialize)]
        struct Record {
            #[serde(default)]
            allowance: Option<String>,
        }
        let path = self.file(SIGNER_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Record>(&bytes)
                .map(|r| r.allowance)
                .map_err(|e| WalletError::Damaged { path, reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// `state.json`.
    pub fn state(&self) -> Result<WalletState, WalletError> {
        let path = self.file("state.json");
        let text = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&text).map_err(|e| WalletError::Damaged { path, reason: e.to_string() })
    }

    /// Replaces `state.json`.
    pub fn save_state(&self, state: &WalletState) -> Result<(), WalletError> {
        replace_file(&self.file("state.json"), &serde_json::to_vec_pretty(state).expect("json"))
    }
}

impl WalletState {
    /// Records `what` in the history.
    pub fn note(&mut self, what: impl Into<String>) {
        self.history.push(Event { time: vigil_cosigner::service::now(), what: what.into() });
    }

    /// Confirmed intake coins not yet spent, as funding inputs, each with the script of the
    /// version whose address it was paid to: any version that applied (the co-signer funds a
    /// vault of today's from them).
    pub fn spendable_coins(&self, policies: &Policies) -> Vec<FundingInput> {
        self.coins
            .iter()
            .filter(|c| !c.spent && policies.applied(c.policy_version))
            .filter_map(|c| {
                let compiled = policies.version(c.policy_version).ok()?;
                let d = compiled.intake_descriptor_on(c.intake_index, c.change).ok()?;
                Some(FundingInput {
                    outpoint: c.outpoint,
                    txout: TxOut { value: Amount::from_sat(c.value_sat), script_pubkey: d.script_pubkey() },
                    intake_index: c.intake_index,
                    change: c.change,
                })
            })
            .collect()
    }

    /// Where the funding of the vault about to take index `next_vault` sends its change under
    /// `compiled`, taken (a crash never reuses it): the change branch at the vault's index, or
    /// in format 1, which has no change branch, a receive index.
    pub fn take_change_index(&mut self, compiled: &CompiledPolicy) -> ChangeTo {
        if compiled.has_change_branch() {
            let index = self.next_vault.max(self.next_change);
            self.next_change = index + 1;
            ChangeTo { index, change_branch: true }
        } else {
            self.next_intake += 1;
            ChangeTo { index: self.next_intake - 1, change_branch: false }
        }
    }

    /// How many change-branch indexes may be in use: one per vault at most.
    pub fn change_indexes(&self) -> u32 {
        self.next_change.max(self.next_vault)
    }

    /// Adds to `scripts` the intake scripts the wallet watches that `derived` (the indexes
    /// derived so far, on the receive and the change branch) lacks: those handed out and
    /// [`INTAKE_LOOKAHEAD`] beyond, on both branches, of every policy version it follows
    /// (today's first, so a coin on an address several versions share is today's; a version
    /// whose intake addresses another already makes adds nothing). Returns the scripts added.
    fn watch_window(
        &self,
        policies: &Policies,
        scripts: &mut HashMap<ScriptBuf, (u32, bool, Option<u32>)>,
        derived: &mut (u32, u32),
    ) -> Vec<ScriptBuf> {
        let ends = (self.next_intake + INTAKE_LOOKAHEAD, self.change_indexes() + INTAKE_LOOKAHEAD);
        let mut added = Vec::new();
        let mut seen_first = Vec::new();
        for compiled in policies.known() {
            let Ok(first) = compiled.intake_descriptor(0) else { continue };
            if seen_first.contains(&first.script_pubkey()) {
                continue;
            }
            seen_first.push(first.script_pubkey());
            let version = Some(compiled.policy().version);
            let change_branch = compiled.has_change_branch();
            let receive = (derived.0..ends.0).map(|i| (i, false));
            let change = (derived.1..ends.1).take_while(|_| change_branch).map(|i| (i, true));
            for (i, change) in receive.chain(change) {
                if let Ok(d) = compiled.intake_descriptor_on(i, change) {
                    if let std::collections::hash_map::Entry::Vacant(e) = scripts.entry(d.script_pubkey()) {
                        added.push(e.key().clone());
                        e.insert((i, change, version));
                    }
                }
            }
        }
        *derived = (derived.0.max(ends.0), derived.1.max(ends.1));
        added
    }

    /// Scans the blocks since the last scan for payments to the intake addresses handed out
    /// (and a few beyond), on the receive and the change branch, of every policy version the
    /// wallet follows, and marks spent coins; returns the tip height.
    ///
    /// A coin found at an index past those handed out (a restored wallet knows none; another
    /// device of the household handed some out) moves the window on at once, and the blocks
    /// are read again from where this scan began: an address past the old window may have
    /// been paid before (addresses are not always paid in the order they were given).
    pub fn scan(&mut self, policies: &Policies, chain: &dyn ChainBackend) -> Result<u32, WalletError> {
        let chain_err = |e: vigil_chain::BackendError| WalletError::Chain(e.to_string());
        let (mut scripts, mut derived) = (HashMap::new(), (0, 0));
        let from = self.scanned_height.max(self.birth_height.saturating_sub(1)) + 1;
        let mut tip;
        loop {
            chain.watch_scripts(&self.watch_window(policies, &mut scripts, &mut derived));
            tip = chain.tip().map_err(chain_err)?.height;
            // What this pass read (the last pass's is what was scanned: the tip may have moved
            // back since an earlier one), and whether the window moved meanwhile.
            let (mut reached, mut moved) = (from - 1, false);
            for height in from..=tip {
                let Some(hash) = chain.block_hash(height).map_err(chain_err)? else { break };
                let block = chain.block(&hash).map_err(chain_err)?;
                let mut found = false;
                for tx in &block.txdata {
                    let txid = tx.compute_txid();
                    for (vout, out) in tx.output.iter().enumerate() {
                        if let Some(&(index, change, policy_version)) = scripts.get(&out.script_pubkey) {
                            let outpoint = OutPoint { txid, vout: vout as u32 };
                            if !self.coins.iter().any(|c| c.outpoint == outpoint) {
                                self.coins.push(IntakeCoin {
                                    outpoint,
                                    value_sat: out.value.to_sat(),
                                    intake_index: index,
                                    change,
                                    height,
                                    spent: false,
                                    policy_version,
                                });
                                let next = if change { &mut self.next_change } else { &mut self.next_intake };
                                *next = (*next).max(index + 1);
                                found = true;
                            }
                        }
                    }
                }
                if found {
                    // The next blocks are read with the window moved on.
                    let added = self.watch_window(policies, &mut scripts, &mut derived);
                    moved |= !added.is_empty();
                    chain.watch_scripts(&added);
                }
                reached = height;
            }
            if !moved {
                self.scanned_height = reached;
                break;
            }
        }
        for coin in self.coins.iter_mut().filter(|c| !c.spent) {
            let unspent = chain.unspent_output(&coin.outpoint).map_err(chain_err)?;
            // A record an earlier release saved again lost the change branch: the script says.
            if let Some(&(index, change, version)) =
                unspent.as_ref().and_then(|o| scripts.get(&o.script_pubkey))
            {
                if (coin.intake_index, coin.change) != (index, change) {
                    (coin.intake_index, coin.change, coin.policy_version) = (index, change, version);
                }
            }
            coin.spent = unspent.is_none();
        }
        for vault in self.vaults.iter_mut().filter(|v| v.confirmed_height.is_none()) {
            if let Some((_, Some(height))) =
                chain.transaction_info(&vault.outpoint.txid).map_err(chain_err)?
            {
                vault.confirmed_height = Some(height);
            }
        }
        Ok(tip)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_wallets_files_and_folder_are_its_owners_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("wallet").join("inner");
        create_private_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&dir), mode(dir.parent().unwrap())), (0o700, 0o700));
        let file = dir.join("wallet.toml");
        // Even over a world-readable temporary file left behind.
        std::fs::write(file.with_extension("tmp"), b"old").unwrap();
        std::fs::set_permissions(file.with_extension("tmp"), std::fs::Permissions::from_mode(0o644)).unwrap();
        replace_file(&file, b"rpc password").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"rpc password");
    }
}
