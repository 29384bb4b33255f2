//! The allowance: the owner's everyday hot wallet, and all an attacker holding the owner can
//! take (DESIGN.md §2, G1). A single-key taproot wallet on the allowance account key
//! (`m/86'/coin'/0'`, in the keystore under both codes), run by BDK: address derivation, coin
//! selection, change, the PSBT. Vigil feeds it blocks from the wallet's own chain backend
//! (`vigil node`, bitcoind or Electrum), gives it the backend's fee estimate, signs with the
//! keystore's key and persists BDK's change sets in `allowance.json` next to `state.json`,
//! replaced atomically like every wallet file.
//!
//! The policy's `hot_limit_sat` is what the allowance should hold at most: the client warns
//! above it and hands out no allowance address while it is over.

use std::path::PathBuf;
use std::sync::Arc;

use bdk_wallet::chain::{BlockId, Merge};
use bdk_wallet::{ChangeSet, KeychainKind, PersistedWallet, SignOptions, Wallet, WalletPersister};
use vigil_chain::ChainBackend;
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::{Address, Amount, FeeRate, Network, Transaction};

use crate::owner::AccountKey;
use crate::session::Session;
use crate::wallet::{replace_file, WalletDir, WalletError};

/// The allowance's file in the wallet directory.
pub const ALLOWANCE_FILE: &str = "allowance.json";

/// The feerate when the backend has no estimate (a private regtest chain, a fresh node),
/// sat/vB.
pub const FALLBACK_SAT_PER_VB: u64 = 2;

/// The confirmation target asked of the backend's fee estimate, in blocks.
pub const CONFIRM_WITHIN_BLOCKS: u16 = 6;

/// Why the allowance could not do something.
#[derive(Debug, thiserror::Error)]
pub enum AllowanceError {
    /// Reading or writing `allowance.json`.
    #[error(transparent)]
    File(#[from] WalletError),
    /// `allowance.json` does not parse or does not match this wallet's keys.
    #[error("{path} is damaged ({reason}); move it aside and run again to rebuild it from the chain")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not enough in the allowance (with the fee): nothing was done.
    #[error("the allowance holds {available}, not enough for {needed} with the fee; nothing was done")]
    Insufficient {
        /// What the spend needs, fee included.
        needed: Amount,
        /// What the allowance holds.
        available: Amount,
    },
    /// The spend could not be built or signed: nothing was sent.
    #[error("the allowance spend: {0}; nothing was sent")]
    Build(String),
    /// The chain backend failed.
    #[error("the node: {0}")]
    Chain(String),
}

fn chain_err(e: vigil_chain::BackendError) -> AllowanceError {
    AllowanceError::Chain(e.to_string())
}

/// `allowance.json`: BDK's change sets, merged into one and replaced atomically.
struct Store {
    path: PathBuf,
}

impl WalletPersister for Store {
    type Error = AllowanceError;

    fn initialize(store: &mut Self) -> Result<ChangeSet, AllowanceError> {
        match std::fs::read(&store.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| AllowanceError::Damaged { path: store.path.clone(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ChangeSet::default()),
            Err(source) => Err(WalletError::Io { path: store.path.clone(), source }.into()),
        }
    }

    fn persist(store: &mut Self, changeset: &ChangeSet) -> Result<(), AllowanceError> {
        let mut all = Self::initialize(store)?;
        all.merge(changeset.clone());
        Ok(replace_file(&store.path, &serde_json::to_vec(&all).expect("json"))?)
    }
}

/// The allowance wallet, open.
pub struct Allowance {
    wallet: PersistedWallet<Store>,
    store: Store,
    birth_height: u32,
}

/// What the allowance holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowanceBalance {
    /// Confirmed, sat.
    pub confirmed_sat: u64,
    /// Unconfirmed (its own change counted; others' payments not yet), sat.
    pub pending_sat: u64,
}

impl Allowance {
    /// Opens (or creates) the allowance of the wallet in `dir` on the allowance account key
    /// `account` (`[fp/86h/coinh/0h]xpub`: public, so `vigil init` makes it before any
    /// unlock); blocks before `birth_height` are never scanned.
    pub fn open(
        dir: &WalletDir,
        account: &str,
        network: Network,
        birth_height: u32,
    ) -> Result<Allowance, AllowanceError> {
        let mut store = Store { path: dir.file(ALLOWANCE_FILE) };
        let external = format!("tr({account}/0/*)");
        let internal = format!("tr({account}/1/*)");
        let damaged = |path: &PathBuf, reason: String| AllowanceError::Damaged { path: path.clone(), reason };
        let loaded = Wallet::load()
            .descriptor(KeychainKind::External, Some(external.clone()))
            .descriptor(KeychainKind::Internal, Some(internal.clone()))
            .check_network(network)
            .load_wallet(&mut store)
            .map_err(|e| damaged(&store.path, e.to_string()))?;
        let wallet = match loaded {
            Some(w) => w,
            None => Wallet::create(external, internal)
                .network(network)
                .create_wallet(&mut store)
                .map_err(|e| damaged(&store.path, e.to_string()))?,
        };
        Ok(Allowance { wallet, store, birth_height })
    }

    /// The allowance of the unlocked wallet `session`, on its account key
    /// ([`Session::allowance_account`]); blocks before `birth_height` are never scanned.
    pub fn of(session: &Session, birth_height: u32) -> Result<Allowance, AllowanceError> {
        let account = session.allowance_account()?;
        Allowance::open(&session.dir, &account, session.network, birth_height)
    }

    fn persist(&mut self) -> Result<(), AllowanceError> {
        self.wallet.persist(&mut self.store)?;
        Ok(())
    }

    /// Feeds the wallet the blocks it has not seen (from the wallet's birth on, stepping back
    /// over a reorg), and persists; returns the tip height.
    ///
    /// BDK looks for the scripts it has revealed and a lookahead past them, which a coin found
    /// moves on. A payment past the lookahead made before one that moved it (a restore, or
    /// addresses paid out of order) is only seen with the moved window: while a pass moves
    /// it, the same blocks are read again.
    pub fn sync(&mut self, chain: &dyn ChainBackend) -> Result<u32, AllowanceError> {
        let mut watched = 0;
        self.watch_new(chain, &mut watched);
        let tip = chain.tip().map_err(chain_err)?.height;
        // The highest block the wallet knows that is still in the chain.
        let mut from = self.wallet.latest_checkpoint();
        while from.height() > 0 && chain.block_hash(from.height()).map_err(chain_err)? != Some(from.hash()) {
            from = from.prev().expect("genesis is always there");
        }
        let start = from.block_id();
        loop {
            let mut connected = start;
            let mut moved = false;
            for height in (start.height + 1).max(self.birth_height)..=tip {
                let Some(hash) = chain.block_hash(height).map_err(chain_err)? else { break };
                let block = chain.block(&hash).map_err(chain_err)?;
                self.wallet
                    .apply_block_connected_to(&block, height, connected)
                    .map_err(|e| AllowanceError::Chain(format!("block {height}: {e}")))?;
                connected = BlockId { height, hash };
                moved |= self.watch_new(chain, &mut watched);
            }
            if !moved {
                break;
            }
        }
        self.persist()?;
        Ok(tip)
    }

    /// Hands the chain backend the scripts the wallet looks for that it was not given yet
    /// (an Electrum backend serves only the named scripts' transactions); `watched` counts
    /// those given. Whether there were any.
    fn watch_new(&self, chain: &dyn ChainBackend, watched: &mut usize) -> bool {
        let all = self.wallet.spk_index().inner().all_spks();
        if all.len() == *watched {
            return false;
        }
        // The backend ignores those it watches already.
        let scripts: Vec<_> = all.values().cloned().collect();
        chain.watch_scripts(&scripts);
        *watched = all.len();
        true
    }

    /// The next fresh address of the allowance and its index, not handed out yet
    /// ([`Self::address`] hands it out).
    pub fn next_address(&self) -> (u32, Address) {
        let index = self.wallet.next_derivation_index(KeychainKind::External);
        (index, self.wallet.peek_address(KeychainKind::External, index).address)
    }

    /// A fresh address of the allowance.
    pub fn address(&mut self) -> Result<Address, AllowanceError> {
        let address = self.wallet.reveal_next_address(KeychainKind::External).address;
        self.persist()?;
        Ok(address)
    }

    /// What it holds.
    pub fn balance(&self) -> AllowanceBalance {
        let b = self.wallet.balance();
        AllowanceBalance {
            confirmed_sat: b.confirmed.to_sat(),
            pending_sat: (b.trusted_pending + b.untrusted_pending).to_sat(),
        }
    }

    /// The feerate to pay: the backend's estimate, else [`FALLBACK_SAT_PER_VB`].
    pub fn feerate(chain: &dyn ChainBackend) -> FeeRate {
        let estimate = chain.fee_estimate(CONFIRM_WITHIN_BLOCKS).ok().flatten();
        FeeRate::from_sat_per_vb(estimate.unwrap_or(FALLBACK_SAT_PER_VB).max(1)).expect("small")
    }

    /// Builds, signs and broadcasts a payment of `amount` to `destination` (BDK's coin
    /// selection, change to the allowance), and records it as pending. Refuses an amount the
    /// allowance cannot cover, changing nothing.
    pub fn pay(
        &mut self,
        key: &AccountKey,
        chain: &dyn ChainBackend,
        destination: &Address,
        amount: Amount,
    ) -> Result<Transaction, AllowanceError> {
        let mut psbt = self.payment(chain, destination, amount)?;
        key.sign_psbt(&mut psbt);
        self.send(psbt, chain)
    }

    /// The unsigned payment of `amount` to `destination` (BDK's coin selection, change to the
    /// allowance), for a signer elsewhere: nothing is persisted until [`Self::send`].
    pub fn payment(
        &mut self,
        chain: &dyn ChainBackend,
        destination: &Address,
        amount: Amount,
    ) -> Result<Psbt, AllowanceError> {
        let feerate = Self::feerate(chain);
        let mut builder = self.wallet.build_tx();
        builder.add_recipient(destination.script_pubkey(), amount).fee_rate(feerate);
        builder.finish().map_err(|e| match e {
            bdk_wallet::error::CreateTxError::CoinSelection(c) => {
                AllowanceError::Insufficient { needed: c.needed, available: c.available }
            }
            other => AllowanceError::Build(other.to_string()),
        })
    }

    /// Finalizes the signed `psbt` of [`Self::payment`], broadcasts it and records it as
    /// pending.
    pub fn send(&mut self, mut psbt: Psbt, chain: &dyn ChainBackend) -> Result<Transaction, AllowanceError> {
        let finalized = self
            .wallet
            .finalize_psbt(&mut psbt, SignOptions::default())
            .map_err(|e| AllowanceError::Build(e.to_string()))?;
        // On a refusal nothing is persisted: the change address BDK revealed is forgotten.
        if !finalized {
            return Err(AllowanceError::Build("the allowance key did not sign every input".into()));
        }
        let tx = psbt.extract_tx().map_err(|e| AllowanceError::Build(e.to_string()))?;
        chain.broadcast(&tx).map_err(|e| AllowanceError::Build(format!("the node refused it: {e}")))?;
        self.wallet.apply_unconfirmed_txs([(Arc::new(tx.clone()), vigil_cosigner::service::now())]);
        self.persist()?;
        Ok(tx)
    }
}
