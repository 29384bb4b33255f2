//! V's funding: a PSBT spending intake coins (native segwit only: the graph hangs on its
//! txid) to the vault's output, for the owner and co-signer to sign.

use bitcoin::psbt::Psbt;
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, Sequence, TxOut};
use miniscript::psbt::PsbtExt;

use crate::config::P2TR_DUST_SAT;
use crate::error::{DescriptorError, PolicyError, PsbtError};
use crate::graph::{CompiledPolicy, VaultPlan};
use crate::tx::unsigned_tx;

/// A coin at an intake address, to fund a vault with.
#[derive(Debug, Clone)]
pub struct FundingInput {
    /// The coin.
    pub outpoint: OutPoint,
    /// Its output.
    pub txout: TxOut,
    /// The intake address index it was received on.
    pub intake_index: u32,
    /// On the intake's change branch (a funding's change, format 2), not the receive branch.
    pub change: bool,
}

/// Where a vault funding's change goes: an intake index, on the change branch (format 2,
/// which a hardware signer recognises as its own change) or on the receive branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeTo {
    /// The index.
    pub index: u32,
    /// On the change branch.
    pub change_branch: bool,
}

impl CompiledPolicy {
    /// The unsigned funding of V from intake coins, as a PSBT for the owner and co-signer to
    /// sign. Refuses any input that is not native segwit: only then is the funding txid, on
    /// which the whole pre-signed graph hangs, fixed before signing.
    pub fn funding_psbt(
        &self,
        plan: &VaultPlan,
        inputs: &[FundingInput],
        change: ChangeTo,
        feerate_sat_per_vb: u64,
    ) -> Result<Psbt, PolicyError> {
        self.funding_psbt_from(&[], plan, inputs, change, feerate_sat_per_vb)
    }

    /// The policy among this one and `earlier` (versions of the same client before a change)
    /// whose intake address at the coin's index (and branch) the coin pays: its descriptor
    /// signs it.
    pub fn intake_source<'a>(
        &'a self,
        earlier: &[&'a CompiledPolicy],
        input: usize,
        coin: &FundingInput,
    ) -> Result<&'a CompiledPolicy, PolicyError> {
        std::iter::once(self)
            .chain(earlier.iter().copied())
            .find(|p| {
                p.intake_descriptor_on(coin.intake_index, coin.change)
                    .is_ok_and(|d| d.script_pubkey() == coin.txout.script_pubkey)
            })
            .ok_or(PolicyError::NotIntakeAddress {
                input,
                intake_index: coin.intake_index,
                change: coin.change,
            })
    }

    /// [`Self::funding_psbt`] from coins paid to intake addresses of this policy or of an
    /// `earlier` version of it (each spent through its own version's leaf), into a vault of
    /// this one; the change goes to this one's intake, at `change`.
    pub fn funding_psbt_from(
        &self,
        earlier: &[&CompiledPolicy],
        plan: &VaultPlan,
        inputs: &[FundingInput],
        change: ChangeTo,
        feerate_sat_per_vb: u64,
    ) -> Result<Psbt, PolicyError> {
        for (i, input) in inputs.iter().enumerate() {
            if !input.txout.script_pubkey.is_witness_program() {
                return Err(PolicyError::NonSegwitFundingInput { input: i, outpoint: input.outpoint });
            }
        }
        if inputs.is_empty() {
            return Err(PolicyError::InsufficientFunds { needed: plan.amount, available: Amount::ZERO });
        }
        let descriptors = inputs
            .iter()
            .enumerate()
            .map(|(i, coin)| {
                self.intake_source(earlier, i, coin)?.intake_descriptor_on(coin.intake_index, coin.change)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let change_descriptor = self.intake_descriptor_on(change.index, change.change_branch)?;
        let vault_output = self.vault_output(plan)?;
        // Never replaced (bumped by CPFP if ever): a replacement would orphan the graph.
        let mut tx = unsigned_tx(
            Version::TWO,
            inputs.iter().map(|i| (i.outpoint, Sequence::ENABLE_LOCKTIME_NO_RBF)),
            vec![
                vault_output,
                TxOut { value: Amount::ZERO, script_pubkey: change_descriptor.script_pubkey() },
            ],
        );
        let satisfaction: u64 = descriptors
            .iter()
            .map(|d| d.max_weight_to_satisfy().map(|w| w.to_wu()))
            .sum::<Result<u64, _>>()
            .map_err(DescriptorError::Weight)?;
        let vsize = (tx.weight().to_wu() + satisfaction).div_ceil(4);
        let fee = Amount::from_sat(vsize * feerate_sat_per_vb);
        let available: Amount = inputs.iter().map(|i| i.txout.value).sum();
        let needed = plan.amount + fee;
        let left =
            available.checked_sub(needed).ok_or(PolicyError::InsufficientFunds { needed, available })?;
        if left.to_sat() < P2TR_DUST_SAT + 43 * feerate_sat_per_vb {
            tx.output.pop(); // Change too small to be worth an output: it goes to fees.
        } else {
            tx.output[1].value = left;
        }
        let mut psbt = Psbt::from_unsigned_tx(tx).map_err(PsbtError::from)?;
        for (i, (input, d)) in inputs.iter().zip(&descriptors).enumerate() {
            psbt.inputs[i].witness_utxo = Some(input.txout.clone());
            crate::spends::fill_input(&mut psbt, i, d)?;
        }
        if psbt.outputs.len() == 2 {
            psbt.update_output_with_descriptor(1, &change_descriptor)
                .map_err(|source| PsbtError::Output { output: 1, source })?;
        }
        Ok(psbt)
    }
}
