//! Spends of the policy's outputs other than the pre-signed graph: PSBTs for the owner's
//! delayed spend, the recovery leaves, the deep vault's paths and intake coins, signed by any
//! PSBT signer and finalized here; and key-path signing for the wallets around vaults.

use std::collections::btree_map::Entry;

use bitcoin::hashes::Hash;
use bitcoin::key::Keypair;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::Message;
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::taproot::{LeafVersion, TapLeafHash, TaprootBuilder, TaprootSpendInfo};
use bitcoin::transaction::Version;
use bitcoin::{OutPoint, ScriptBuf, Sequence, Transaction, TxOut, Witness};
use miniscript::descriptor::{ConversionError, DefiniteDescriptorKey};
use miniscript::psbt::{PsbtExt, UtxoUpdateError};
use miniscript::{Descriptor, ToPublicKey};

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
        fill_input(&mut psbt, i, &input.descriptor)?;
    }
    Ok(psbt)
}

/// Fills input `i` of `psbt` (its `witness_utxo` set) from its descriptor, as miniscript's
/// `update_input_with_descriptor` does: a taproot input gets its internal key, merkle root,
/// leaf scripts with their control blocks, and every key's origin with the leaves it signs.
/// Taproot inputs are filled here with the process's one secp context: miniscript makes two
/// per call, each randomized, which cost the co-signer 8% of its CPU per spend request. Other
/// descriptors go to miniscript. Stricter than miniscript: a taproot input that also carries
/// a non-witness UTXO is refused (no caller sets one).
pub(crate) fn fill_input(
    psbt: &mut Psbt,
    i: usize,
    descriptor: &Descriptor<DefiniteDescriptorKey>,
) -> Result<(), PolicyError> {
    let failed = |source| PsbtError::Input { input: i, source };
    let Descriptor::Tr(tr) = descriptor else {
        return Ok(psbt.update_input_with_descriptor(i, descriptor).map_err(failed)?);
    };
    let derived =
        descriptor.derived_descriptor(secp()).map_err(|e| failed(UtxoUpdateError::DerivationError(e)))?;
    let Descriptor::Tr(derived) = derived else { unreachable!("a tr() descriptor derives to tr()") };
    let internal = derived.internal_key().to_x_only_pubkey();
    let leaves: Vec<_> = derived.iter_scripts().map(|(depth, ms)| (depth, ms.encode(), ms)).collect();
    let info = if derived.tap_tree().is_none() {
        TaprootSpendInfo::new_key_spend(secp(), internal, None)
    } else {
        let mut builder = TaprootBuilder::new();
        for (depth, script, _) in &leaves {
            builder = builder.add_leaf(*depth, script.clone()).expect("a valid descriptor's tree");
        }
        builder.finalize(secp(), internal).expect("a valid descriptor's tree")
    };
    let inputs = psbt.inputs.len();
    let input = psbt.inputs.get_mut(i).ok_or(failed(UtxoUpdateError::IndexOutOfBounds(i, inputs)))?;
    let paid = input.witness_utxo.as_ref().ok_or(failed(UtxoUpdateError::UtxoCheck))?;
    if input.non_witness_utxo.is_some() {
        return Err(failed(UtxoUpdateError::UtxoCheck).into());
    }
    if paid.script_pubkey != ScriptBuf::new_p2tr_tweaked(info.output_key()) {
        return Err(failed(UtxoUpdateError::MismatchedScriptPubkey).into());
    }
    let origin = |key: &DefiniteDescriptorKey| -> Result<_, PolicyError> {
        let path = key.full_derivation_path();
        Ok(path
            .map(|p| (key.master_fingerprint(), p))
            .ok_or_else(|| failed(UtxoUpdateError::DerivationError(ConversionError::MultiKey)))?)
    };
    input.tap_merkle_root = info.merkle_root();
    input.tap_internal_key = Some(internal);
    input.tap_key_origins.insert(internal, (Vec::new(), origin(tr.internal_key())?));
    for ((_, script, derived_ms), (_, ms)) in leaves.into_iter().zip(tr.iter_scripts()) {
        let leaf = (script, LeafVersion::TapScript);
        let hash = TapLeafHash::from_script(&leaf.0, leaf.1);
        let control = info.control_block(&leaf).expect("every leaf of the tree has a control block");
        input.tap_scripts.insert(control, leaf);
        for (key, definite) in derived_ms.iter_pk().zip(ms.iter_pk()) {
            match input.tap_key_origins.entry(key.to_x_only_pubkey()) {
                Entry::Occupied(mut e) => {
                    let hashes = &mut e.get_mut().0;
                    if hashes.last() != Some(&hash) {
                        hashes.push(hash);
                    }
                }
                Entry::Vacant(e) => {
                    e.insert((vec![hash], origin(&definite)?));
                }
            }
        }
    }
    for (hashes, _) in input.tap_key_origins.values_mut() {
        hashes.sort();
        hashes.dedup();
    }
    Ok(())
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
