//! An unlocked wallet: the keys, the policy versions it follows, the clients of the co-signer and the
//! towers, and the one heartbeat every unlock sends (DESIGN.md §5): fixed size, sealed to
//! the co-signer, carrying whichever token the keystore's slot held. Nothing here branches on
//! which code was typed; it cannot know.

use vigil_cosigner::wire::{self, Heartbeat, HeartbeatAck};
use vigil_policy::bitcoin::hex::DisplayHex;
use vigil_policy::bitcoin::Network;
use vigil_policy::CompiledPolicy;

use crate::cosigner::{ClientError, CosignerClient, Nonces};
use crate::owner::{self, OwnerKeyError, Unlocked};
use crate::policies::Policies;
use crate::towers::TowerClient;
use crate::wallet::{WalletDir, WalletError};

/// Why a session did not open.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The keystore did not open.
    #[error(transparent)]
    Keys(#[from] OwnerKeyError),
    /// The wallet's files are missing or damaged.
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// The policy names no co-signer URL, or a request cannot be numbered.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// An unlocked wallet.
pub struct Session {
    /// The wallet directory.
    pub dir: WalletDir,
    /// The keys the code opened.
    pub keys: Unlocked,
    /// The pinned policy and every change since ([`crate::policies`]).
    pub policies: Policies,
    /// The pinned policy's text (its sha256 names the client).
    pub policy_text: String,
    /// The wallet's network.
    pub network: Network,
    /// `wallet.toml`.
    pub config: crate::wallet::WalletConfig,
    /// The owner's client of the co-signer.
    pub cosigner: CosignerClient,
    /// Whether the co-signer got this unlock's heartbeat (`Err`: why not).
    pub heartbeat: Result<(), ClientError>,
}

impl Session {
    /// Unlocks the wallet in `dir` with `code`, sends the heartbeat, and follows the policy
    /// changes the co-signer recorded (the ones kept from last time if it cannot be reached).
    pub fn open(dir: &WalletDir, code: &[u8]) -> Result<Session, SessionError> {
        let config = dir.config()?;
        let network = config.network()?;
        let keys = owner::unlock(&dir.path, code, network)?;
        let policy_text = dir.policy_text()?;
        let nonces = Nonces::new(dir.file("nonce"));
        let cosigner = CosignerClient::with_nonces(&policy_text, keys.auth_keypair(), nonces)?;
        let mut session = Session {
            dir: dir.clone(),
            keys,
            policies: Policies::pinned(dir.policy()?),
            policy_text,
            network,
            config,
            cosigner,
            heartbeat: Ok(()),
        };
        session.heartbeat = session.send_heartbeat();
        // Not asked again of a co-signer that just did not answer: one wait is enough.
        let served = match &session.heartbeat {
            Ok(()) => Some(
                session.cosigner.get::<wire::PolicyChanges>("/v1/policy/changes").map_err(|e| e.to_string()),
            ),
            Err(_) => None,
        };
        // A record that no longer checks must not keep the wallet from a lockdown, a panic or
        // a recovery: it works from the pinned policy and says so.
        session.policies = match Policies::follow(dir, served) {
            Ok(policies) => policies,
            Err(e) => {
                let mut pinned = Policies::pinned(dir.policy()?);
                pinned.warning = Some(format!(
                    "the policy's changes cannot be followed ({e}); working from the pinned policy: lockdown, \
                     panic, recovery and status work, receiving and vaulting wait until this is fixed"
                ));
                pinned.degraded = true;
                pinned
            }
        };
        Ok(session)
    }

    /// The allowance's account key: the hardware signer's when it holds the allowance, else
    /// the keystore's (the same under either code).
    pub fn allowance_account(&self) -> Result<String, WalletError> {
        Ok(self.dir.allowance_on_signer()?.unwrap_or_else(|| self.keys.allowance().policy_key()))
    }

    /// The policy that applies now: new vaults, addresses and change are built from it.
    pub fn current(&self) -> &CompiledPolicy {
        self.policies.current()
    }

    fn send_heartbeat(&self) -> Result<(), ClientError> {
        let key =
            wire::heartbeat_key(&self.keys.auth_keypair(), &self.current().policy().cosigner.auth_key());
        let sealed = wire::seal_heartbeat(&key, self.keys.heartbeat_token());
        let _: HeartbeatAck =
            self.cosigner.post("/v1/heartbeat", &Heartbeat { sealed: sealed.to_lower_hex_string() })?;
        Ok(())
    }

    /// The wallet's node.
    pub fn chain(&self) -> Box<dyn vigil_chain::ChainBackend> {
        vigil_tower::daemon::backend(&self.config.chain)
    }

    /// Clients of every tower of the policy that applies now, signing as the owner.
    pub fn towers<'a>(&'a self, key: &'a vigil_policy::bitcoin::key::Keypair) -> Vec<TowerClient<'a>> {
        TowerClient::all(self.current().policy(), key, self.cosigner.nonces())
    }

    /// Every tower's view of the client (`GET /v1/clients/{id}`), by name, or why it did not
    /// answer.
    pub fn tower_views(&self) -> Vec<(String, Result<serde_json::Value, String>)> {
        let key = self.keys.auth_keypair();
        let path = format!("/v1/clients/{}", self.cosigner.client_id());
        self.towers(&key).iter().map(|t| (t.name.clone(), t.get(&path).map_err(|e| e.to_string()))).collect()
    }

    /// Freezes every vault spend for `blocks` blocks at the co-signer and at every tower
    /// directly (a compromised co-signer must not keep it from them); with `sweep`, the
    /// guardians are asked to sweep every vault to the deep vault. The wallet remembers the
    /// lockdown once anyone took it.
    pub fn lock_down(&self, blocks: u32, sweep: bool) -> Result<LockdownReport, WalletError> {
        let cosigner: Result<wire::LockdownStatus, _> =
            self.cosigner.post("/v1/lockdown", &wire::Lockdown { blocks, sweep });
        let key = self.keys.auth_keypair();
        // Our own node first (a compromised co-signer could name a height the towers refuse
        // or one that ends at once), else the co-signer's, else each tower's own tip.
        let until = match self.chain().tip() {
            Ok(t) => Some(t.height.saturating_add(blocks)),
            Err(_) => cosigner.as_ref().ok().map(|s| s.until_height),
        };
        let towers = crate::towers::lock_down_everywhere(
            &self.towers(&key),
            self.cosigner.client_id(),
            until,
            blocks,
            false,
        );
        let report =
            LockdownReport { cosigner: cosigner.map(|s| s.until_height).map_err(|e| e.to_string()), towers };
        if let (Some(h), false) = (until, report.nobody_took_it()) {
            let mut state = self.dir.state()?;
            state.lockdown_until = state.lockdown_until.max(Some(h));
            state.note(format!("locked down until block {h}"));
            self.dir.save_state(&state)?;
        }
        Ok(report)
    }
}

/// Who took a lockdown.
#[derive(Debug, Clone)]
pub struct LockdownReport {
    /// The co-signer's end height, or why it did not take it.
    pub cosigner: Result<u32, String>,
    /// Each tower's name and, if it was not reached or refused, why.
    pub towers: Vec<(String, Option<String>)>,
}

impl LockdownReport {
    /// Neither the co-signer nor any tower took it.
    pub fn nobody_took_it(&self) -> bool {
        self.cosigner.is_err() && self.towers.iter().all(|(_, e)| e.is_some())
    }
}
