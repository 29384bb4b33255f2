//! Spends of the policy's outputs other than the pre-signed graph: PSBTs for the owner's
//! delayed spend, the recovery leaves, the deep vault's paths and intake coins, signed by any
//! PSBT signer and finalized here; and key-path signing for the wallets around vaults.

use bitcoin::hashes::Hash;
use bitcoin::key::Keypair;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::Message;
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::transaction::Version;
use bitcoin::{OutPoint, Sequence, Transaction, TxOut, Witness};
use miniscript::descriptor::DefiniteDescriptorKey;
use miniscript::psbt::PsbtExt;
use miniscript::Descriptor;

use crate::config::secp;
use crate::error::{PolicyError, PsbtError, SignatureError};
use crate::tx::unsigned_tx;

/// An input of a spend from one of the policy's outputs (unvault spend leaf, recovery leaves,
/// the deep vault's paths, intake).
#[derive(Debug, Clone)]
pub struct SpendInput {
    /// What it spends.
    pub outpoint: OutPoint,
    /// The output spent.
    pub txout: TxOut,
    /// The output's descriptor (definite, with key origins so PSBT signers find their keys).
    pub descriptor: Descriptor<DefiniteDescriptorKey>,
    /// nSequence: the relative timelock the chosen leaf needs (DELAY, T_RECOVER, LONG) or none.
    pub sequence: Sequence,
}

/// A PSBT spending `inputs` to `outputs`, for the key holders to sign with any PSBT signer,
/// then [`finalize`].
pub fn spend_psbt(inputs: &[SpendInput], outputs: Vec<TxOut>) -> Result<Psbt, PolicyError> {
    let tx = unsigned_tx(Version::TWO, inputs.iter().map(|i| (i.outpoint, i.sequence)), outputs);
    let mut psbt = Psbt::from_unsigned_tx(tx).map_err(PsbtError::from)?;
    for (i, input) in inputs.iter().enumerate() {
        psbt.inputs[i].witness_utxo = Some(input.txout.clone());
        psbt.update_input_with_descriptor(i, &input.descriptor)
            .map_err(|source| PsbtError::Input { input: i, source })?;
    }
    Ok(psbt)
}

/// Signs input `input` of `tx` as a key-path spend of `keypair`'s taproot output (no script
/// tree, `SIGHASH_DEFAULT`): the wallets around vaults (a tower's fee wallet, test wallets).
pub fn sign_key_path(
    tx: &mut Transaction,
    input: usize,
    prevouts: &[TxOut],
    keypair: &Keypair,
) -> Result<(), PolicyError> {
    use bitcoin::key::TapTweak;
    let sighash = SighashCache::new(&*tx)
        .taproot_key_spend_signature_hash(input, &Prevouts::All(prevouts), TapSighashType::Default)
        .map_err(PsbtError::from)?;
    let tweaked = keypair.tap_tweak(secp(), None).to_keypair();
    let sig = secp().sign_schnorr(&Message::from_digest(sighash.to_byte_array()), &tweaked);
    tx.input[input].witness = Witness::from_slice(&[sig.as_ref()]);
    Ok(())
}

/// Finalizes a signed PSBT (the cheapest leaf the signatures and timelocks satisfy) and
/// extracts the transaction.
pub fn finalize(mut psbt: Psbt) -> Result<Transaction, PolicyError> {
    psbt.finalize_mut(secp()).map_err(SignatureError::Unsatisfied)?;
    Ok(psbt.extract_tx().map_err(PsbtError::from)?)
}
