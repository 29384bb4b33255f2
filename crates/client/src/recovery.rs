//! Recovery without the co-signer (DESIGN.md §3): when the co-signer is gone for good, the
//! owner and a quorum of guardians move the household's coins through the recovery leaves,
//! which open T_RECOVER blocks after each coin confirmed. T_RECOVER is longer than any
//! captivity, so this path gives a kidnapper nothing.
//!
//! Three kinds of coin have a recovery leaf: intake coins, unvaulted coins (U's output) and
//! cancelled coins (the recovery output R a cancel paid to). A vault itself has none: its only
//! spends are the pre-signed ones, so recovery starts by broadcasting each vault's unvault;
//! the towers cancel it to R (or, with no tower left, U's output waits its own T_RECOVER).
//!
//! The owner signs one PSBT moving every coin whose leaf is open to one address; each guardian
//! adds a signature with `vigil guardian sign-recovery`; the owner finalizes and broadcasts.
//! The wallet keeps the unsigned transaction's id, so a PSBT changed on its way round (another
//! destination, other coins) is refused when it comes back.

use vigil_chain::ChainBackend;
use vigil_policy::bitcoin::consensus::encode::deserialize_hex;
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::{Address, Amount, FeeRate, OutPoint, Sequence, Transaction, TxOut, Txid};
use vigil_policy::{finalize, spend_psbt, CompiledPolicy, PolicyError, SpendInput};

use crate::policies::Policies;
use crate::wallet::{VaultRecord, WalletError, WalletState};

/// The least feerate recovery pays, sat/vB (more when the node estimates more): no hurry,
/// but enough to relay when blocks are not full.
pub const RECOVERY_SAT_PER_VB: u64 = 3;

/// Why recovery could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Bad input or nothing to do: nothing was done.
    #[error("{0}; nothing was done")]
    Refused(String),
    /// The chain backend failed: run it again.
    #[error("the node: {0}")]
    Chain(String),
    /// The policy could not build the spend.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The wallet's records cannot be used.
    #[error(transparent)]
    Wallet(#[from] WalletError),
}

fn chain_err(e: vigil_chain::BackendError) -> RecoveryError {
    RecoveryError::Chain(e.to_string())
}

/// What a recoverable coin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoinKind {
    /// Paid to an intake address, never vaulted.
    Intake,
    /// A vault's unvault output, not spent.
    Unvaulted,
    /// A cancelled unvault's coins, in the recovery output R.
    Cancelled,
    /// Swept to the deep vault.
    DeepVault,
}

impl CoinKind {
    /// In words.
    pub fn name(self) -> &'static str {
        match self {
            CoinKind::Intake => "intake",
            CoinKind::Unvaulted => "unvaulted",
            CoinKind::Cancelled => "cancelled",
            CoinKind::DeepVault => "deep vault",
        }
    }
}

/// A coin the recovery leaves can move now or later.
#[derive(Debug, Clone)]
pub struct RecoverableCoin {
    /// What it is.
    pub kind: CoinKind,
    /// The spend input (its recovery leaf's timelock as nSequence).
    pub input: SpendInput,
    /// The first block its recovery leaf can be spent in.
    pub opens_at: u32,
    /// For a deep-vault coin, its slow path's wait (LONG of the version it was made under):
    /// the nSequence a spend without the co-signer needs.
    pub slow_wait: Sequence,
    /// The policy version whose scripts it has (none: the pinned one).
    pub version: Option<u32>,
    /// The vault it comes from (none for an intake coin).
    pub vault: Option<OutPoint>,
}

/// Where the household's coins stand for recovery.
#[derive(Debug, Default)]
pub struct Survey {
    /// Coins whose recovery leaf is open in the next block.
    pub ready: Vec<RecoverableCoin>,
    /// Coins whose leaf opens later (or once their transaction confirms).
    pub later: Vec<RecoverableCoin>,
    /// Vaults whose unvault was broadcast now or earlier and has not confirmed.
    pub unvaulting: Vec<OutPoint>,
    /// Vaults still in place (no unvault sent): `unvaults_to_send` starts their clock.
    pub in_place: Vec<OutPoint>,
    /// Coins in the deep vault: the fast path (backup + co-signer + every guardian) moves
    /// them at once; `opens_at` is when the slow path (backup + guardians) opens, LONG after.
    pub deep_vault: Vec<RecoverableCoin>,
    /// Coins and vaults made under a policy version this wallet cannot read now, and why:
    /// the others are recovered meanwhile.
    pub unreadable: Vec<(OutPoint, String)>,
}

/// Marks every confirmed vault still in place as unvaulted and returns the unvaults to
/// broadcast: the caller saves the state first, so a crash after a broadcast does not forget
/// it; a vault marked earlier whose unvault never left (the node refused it, a crash) is sent
/// again. Returns each vault and its unvault, and whether it was marked just now.
pub fn unvaults_to_send(
    state: &mut WalletState,
    chain: &dyn ChainBackend,
) -> Result<Vec<(OutPoint, Transaction, bool)>, RecoveryError> {
    let mut out = Vec::new();
    for i in 0..state.vaults.len() {
        let vault = &state.vaults[i];
        // Not funded yet, or V already spent (its unvault, or a sweep to the deep vault).
        if vault.confirmed_height.is_none()
            || chain.unspent_output(&vault.outpoint).map_err(chain_err)?.is_none()
        {
            continue;
        }
        let unvault: Transaction = deserialize_hex(&vault.unvault).map_err(|_| {
            RecoveryError::Refused(format!("the record of vault {} is damaged", vault.outpoint))
        })?;
        let (outpoint, fresh) = (vault.outpoint, !vault.unvaulted);
        if fresh {
            state.vaults[i].unvaulted = true;
            state.note(format!("recovery: unvault {} of vault {outpoint} sent", unvault.compute_txid()));
        }
        out.push((outpoint, unvault, fresh));
    }
    Ok(out)
}

/// Finds every coin the recovery leaves can move, and when: each by the scripts (and
/// T_RECOVER) of the policy version it was made under.
pub fn survey(
    policies: &Policies,
    state: &WalletState,
    chain: &dyn ChainBackend,
) -> Result<Survey, RecoveryError> {
    let tip = chain.tip().map_err(chain_err)?.height;
    let mut survey = Survey::default();
    let mut place = |kind,
                     (outpoint, txout): (OutPoint, TxOut),
                     descriptor,
                     confirmed: Option<u32>,
                     t_recover: u16,
                     (version, vault): (Option<u32>, Option<OutPoint>)| {
        let opens_at = confirmed.map_or(u32::MAX, |h| h + t_recover as u32);
        let coin = RecoverableCoin {
            kind,
            input: SpendInput { outpoint, txout, descriptor, sequence: Sequence::from_height(t_recover) },
            opens_at,
            slow_wait: Sequence::from_height(t_recover),
            version,
            vault,
        };
        if opens_at <= tip + 1 {
            survey.ready.push(coin);
        } else {
            survey.later.push(coin);
        }
    };
    for coin in state.coins.iter().filter(|c| !c.spent) {
        let Some(txout) = chain.unspent_output(&coin.outpoint).map_err(chain_err)? else { continue };
        let compiled = match policies.version(coin.policy_version) {
            Ok(compiled) => compiled,
            Err(e) => {
                survey.unreadable.push((coin.outpoint, e.to_string()));
                continue;
            }
        };
        place(
            CoinKind::Intake,
            (coin.outpoint, txout),
            compiled.intake_descriptor_on(coin.intake_index, coin.change)?,
            Some(coin.height),
            compiled.policy().delays.recovery,
            (coin.policy_version, None),
        );
    }
    for vault in &state.vaults {
        let damaged = || RecoveryError::Refused(format!("the record of vault {} is damaged", vault.outpoint));
        let plan = vault.plan().ok_or_else(damaged)?;
        let compiled = match policies.version(vault.policy_version) {
            Ok(compiled) => compiled,
            Err(e) => {
                survey.unreadable.push((vault.outpoint, e.to_string()));
                continue;
            }
        };
        let (t_recover, long) = (compiled.policy().delays.recovery, compiled.policy().delays.deep_vault);
        let descriptors = compiled.vault_descriptors(&plan)?;
        match locate(compiled, vault, chain)? {
            VaultPlace::Unvaulted { outpoint, txout, height } => place(
                CoinKind::Unvaulted,
                (outpoint, txout),
                descriptors.unvault,
                Some(height),
                t_recover,
                (vault.policy_version, Some(vault.outpoint)),
            ),
            VaultPlace::Cancelled { outpoint, txout, height } => place(
                CoinKind::Cancelled,
                (outpoint, txout),
                descriptors.recovery,
                Some(height),
                t_recover,
                (vault.policy_version, Some(vault.outpoint)),
            ),
            VaultPlace::DeepVault { outpoint, txout, height } => survey.deep_vault.push(RecoverableCoin {
                kind: CoinKind::DeepVault,
                input: SpendInput {
                    outpoint,
                    txout,
                    descriptor: descriptors.deep_vault,
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                },
                opens_at: height + long as u32,
                slow_wait: Sequence::from_height(long),
                version: vault.policy_version,
                vault: Some(vault.outpoint),
            }),
            VaultPlace::Unvaulting => survey.unvaulting.push(vault.outpoint),
            VaultPlace::Protected => survey.in_place.push(vault.outpoint),
            VaultPlace::FundingSent | VaultPlace::Spent | VaultPlace::Unreadable(_) => {}
        }
    }
    Ok(survey)
}

/// Where a vault's coins are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultPlace {
    /// The funding has not confirmed.
    FundingSent,
    /// In the vault.
    Protected,
    /// Its unvault is sent, not confirmed.
    Unvaulting,
    /// In the unvault output, not spent yet.
    Unvaulted {
        /// U's output.
        outpoint: OutPoint,
        /// Its value and script.
        txout: TxOut,
        /// U's height.
        height: u32,
    },
    /// Cancelled: in the recovery output R.
    Cancelled {
        /// R.
        outpoint: OutPoint,
        /// Its value and script.
        txout: TxOut,
        /// The cancel's height.
        height: u32,
    },
    /// Swept to the deep vault (by E or UE), not spent from it yet.
    DeepVault {
        /// The deep-vault coin.
        outpoint: OutPoint,
        /// Its value and script.
        txout: TxOut,
        /// E's or UE's height.
        height: u32,
    },
    /// Paid out (the vault spend), or R already recovered.
    Spent,
    /// Made under a policy version the wallet cannot read now (why, in words).
    Unreadable(String),
}

impl VaultPlace {
    /// In words, for `vigil status`.
    pub fn name(&self) -> &'static str {
        match self {
            VaultPlace::FundingSent => "funding sent",
            VaultPlace::Protected => "protected",
            VaultPlace::Unvaulting => "unvault sent",
            VaultPlace::Unvaulted { .. } => "unvaulted",
            VaultPlace::Cancelled { .. } => "cancelled (in your recovery output)",
            VaultPlace::DeepVault { .. } => "in the deep vault",
            VaultPlace::Spent => "spent",
            VaultPlace::Unreadable(_) => "not readable now (its policy version is unknown here)",
        }
    }
}

/// Follows a vault's coins along its graph on the chain.
pub fn locate(
    compiled: &CompiledPolicy,
    vault: &VaultRecord,
    chain: &dyn ChainBackend,
) -> Result<VaultPlace, RecoveryError> {
    if vault.confirmed_height.is_none() {
        return Ok(VaultPlace::FundingSent);
    }
    if chain.unspent_output(&vault.outpoint).map_err(chain_err)?.is_some() {
        return Ok(if vault.unvaulted { VaultPlace::Unvaulting } else { VaultPlace::Protected });
    }
    let damaged = || RecoveryError::Refused(format!("the record of vault {} is damaged", vault.outpoint));
    let graph = compiled.build_graph(&vault.plan().ok_or_else(damaged)?, vault.outpoint)?;
    let u = OutPoint { txid: graph.unvault_txid(), vout: 0 };
    let deep = |swept: Option<(Txid, u32)>| -> Result<Option<VaultPlace>, RecoveryError> {
        let Some((txid, height)) = swept else { return Ok(None) };
        let outpoint = OutPoint { txid, vout: 0 };
        Ok(Some(match chain.unspent_output(&outpoint).map_err(chain_err)? {
            Some(txout) => VaultPlace::DeepVault { outpoint, txout, height },
            None => VaultPlace::Spent,
        }))
    };
    let Some((_, Some(u_height))) = chain.transaction_info(&u.txid).map_err(chain_err)? else {
        // V is spent and U is not confirmed: E swept it (or U waits in the mempool).
        let swept = confirmed_any(chain, graph.emergencies.iter().map(|e| e.tx.compute_txid()))?;
        return Ok(deep(swept)?.unwrap_or(VaultPlace::Unvaulting));
    };
    if let Some(txout) = chain.unspent_output(&u).map_err(chain_err)? {
        return Ok(VaultPlace::Unvaulted { outpoint: u, txout, height: u_height });
    }
    if let Some((c, height)) = confirmed_any(chain, graph.cancels.iter().map(|c| c.tx.compute_txid()))? {
        let r = OutPoint { txid: c, vout: 0 };
        return Ok(match chain.unspent_output(&r).map_err(chain_err)? {
            Some(txout) => VaultPlace::Cancelled { outpoint: r, txout, height },
            None => VaultPlace::Spent,
        });
    }
    let swept = confirmed_any(chain, graph.unvault_emergencies.iter().map(|e| e.tx.compute_txid()))?;
    Ok(deep(swept)?.unwrap_or(VaultPlace::Spent))
}

/// The first of `txids` that confirmed, and its height.
fn confirmed_any(
    chain: &dyn ChainBackend,
    txids: impl Iterator<Item = Txid>,
) -> Result<Option<(Txid, u32)>, RecoveryError> {
    for txid in txids {
        if let Some((_, Some(h))) = chain.transaction_info(&txid).map_err(chain_err)? {
            return Ok(Some((txid, h)));
        }
    }
    Ok(None)
}

/// One PSBT moving `coins` to `destination`, less the fee; the owner's signature is the
/// caller's to add. Refuses an empty set and a sum the fee would eat.
pub fn recovery_psbt(
    coins: &[RecoverableCoin],
    destination: &Address,
    feerate: FeeRate,
) -> Result<Psbt, RecoveryError> {
    if coins.is_empty() {
        return Err(RecoveryError::Refused("no coin's recovery leaf is open yet".into()));
    }
    let total: u64 = coins.iter().map(|c| c.input.txout.value.to_sat()).sum();
    // Upper bound: each input's heaviest leaf (the recovery leaf is one of them).
    let mut weight = 4 * (10 + 43) + 2;
    for c in coins {
        let satisfy = c
            .input
            .descriptor
            .max_weight_to_satisfy()
            .map_err(|e| PolicyError::from(vigil_policy::DescriptorError::Weight(e)))?;
        weight += 4 * 41 + satisfy.to_wu();
    }
    let fee = weight.div_ceil(4) * feerate.to_sat_per_vb_ceil().max(RECOVERY_SAT_PER_VB);
    let dust = destination.script_pubkey().minimal_non_dust().to_sat();
    if total < fee + dust {
        return Err(RecoveryError::Refused(format!(
            "the coins ({}) do not cover the fee ({})",
            Amount::from_sat(total),
            Amount::from_sat(fee)
        )));
    }
    let inputs: Vec<SpendInput> = coins.iter().map(|c| c.input.clone()).collect();
    let output = TxOut { value: Amount::from_sat(total - fee), script_pubkey: destination.script_pubkey() };
    Ok(spend_psbt(&inputs, vec![output])?)
}

/// Combines the signed copies of the recovery PSBT whose unsigned transaction is `expected`
/// (a copy of anything else is refused: it was changed on its way round).
pub fn combine(copies: Vec<Psbt>, expected: Txid) -> Result<Psbt, RecoveryError> {
    for copy in &copies {
        if copy.unsigned_tx.compute_txid() != expected {
            return Err(RecoveryError::Refused(format!(
                "this PSBT is not the recovery this wallet prepared (its transaction is {}, \
                 this wallet's is {expected}): it was changed or belongs elsewhere",
                copy.unsigned_tx.compute_txid()
            )));
        }
    }
    let mut copies = copies.into_iter();
    let mut psbt = copies.next().ok_or_else(|| RecoveryError::Refused("no PSBT given".into()))?;
    for copy in copies {
        psbt.combine(copy).map_err(|e| RecoveryError::Refused(format!("the PSBTs do not combine: {e}")))?;
    }
    Ok(psbt)
}

/// Finalizes a combined recovery PSBT: each input through the leaf its signatures satisfy.
pub fn finish(psbt: Psbt) -> Result<Transaction, RecoveryError> {
    finalize(psbt).map_err(|e| {
        RecoveryError::Refused(format!(
            "not enough signatures yet (a recovery leaf needs yours and a quorum of guardians'; the deep \
             vault your backup key's and every guardian's, and the co-signer's on its fast path): {e}"
        ))
    })
}
