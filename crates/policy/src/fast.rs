//! Fast paths for building vaults in bulk, cross-checked against rust-bitcoin and miniscript.
//!
//! libsecp256k1's `tweak_add` computes `P + t·G` with a variable-base multiplication; with the
//! generator's constant-time table and one point addition it costs about half. Building a vault
//! needs one such tweak per key (BIP32 child derivation) and per output (the taproot tweak), so
//! this halves the graph's cost outside its signatures. Everything here is public data.

use bitcoin::bip32::Xpub;
use bitcoin::hashes::{hmac, sha512, Hash, HashEngine};
use bitcoin::key::{TweakedPublicKey, XOnlyPublicKey};
use bitcoin::secp256k1::{Parity, PublicKey, SecretKey};
use bitcoin::taproot::{ControlBlock, LeafVersion, TapTweakHash, TaprootBuilder};
use bitcoin::ScriptBuf;
use miniscript::Descriptor;

use crate::config::secp;
use crate::error::{DescriptorError, PolicyError, TaprootError};

/// `point + t·G`, or `None` when `t` is not a valid scalar or the sum is infinity
/// (probability below 2^-127).
fn add_generator_multiple(point: &PublicKey, t: &[u8; 32]) -> Option<PublicKey> {
    let t = SecretKey::from_slice(t).ok()?;
    point.combine(&PublicKey::from_secret_key(secp(), &t)).ok()
}

/// BIP32 `CKDpub(xpub, index)` for a non-hardened index: the child's public key.
pub(crate) fn child_public_key(xpub: &Xpub, index: u32) -> Result<PublicKey, PolicyError> {
    let mut engine = hmac::HmacEngine::<sha512::Hash>::new(&xpub.chain_code[..]);
    engine.input(&xpub.public_key.serialize());
    engine.input(&index.to_be_bytes());
    let i = hmac::Hmac::<sha512::Hash>::from_engine(engine).to_byte_array();
    let tweak: [u8; 32] = i[..32].try_into().expect("64-byte HMAC");
    match add_generator_multiple(&xpub.public_key, &tweak) {
        Some(key) => Ok(key),
        // BIP32 says: skip to the next index. Vigil refuses instead; it will not happen.
        None => Err(DescriptorError::InvalidChild(index).into()),
    }
}

/// A taproot output's script and the control block of each leaf (in the descriptor's order).
pub(crate) struct TaprootOutput {
    pub script_pubkey: ScriptBuf,
    pub leaves: Vec<(ScriptBuf, ControlBlock)>,
}

/// The output of a `tr()` descriptor over x-only keys, computed with the fast tweak.
pub(crate) fn taproot_output(d: &Descriptor<XOnlyPublicKey>) -> Result<TaprootOutput, PolicyError> {
    let Descriptor::Tr(tr) = d else { return Err(TaprootError::NotTaproot.into()) };
    let internal = *tr.internal_key();
    let mut builder = TaprootBuilder::new();
    let mut scripts = Vec::new();
    for (depth, ms) in tr.iter_scripts() {
        let script = ms.encode();
        builder = builder.add_leaf(depth, script.clone()).map_err(TaprootError::from)?;
        scripts.push(script);
    }
    let node = builder.try_into_node_info().map_err(|_| TaprootError::IncompleteTree)?;
    let tweak = TapTweakHash::from_key_and_tweak(internal, Some(node.node_hash())).to_byte_array();
    let point = PublicKey::from_x_only_public_key(internal, Parity::Even);
    let output = add_generator_multiple(&point, &tweak).ok_or(TaprootError::Tweak)?;
    let (output_key, parity) = output.x_only_public_key();
    let mut leaves = Vec::with_capacity(scripts.len());
    for script in scripts {
        let leaf = node
            .leaf_nodes()
            .find(|l| l.script() == Some(script.as_script()))
            .ok_or(TaprootError::LeafMissing)?;
        let control = ControlBlock {
            leaf_version: LeafVersion::TapScript,
            output_key_parity: parity,
            internal_key: internal,
            merkle_branch: leaf.merkle_branch().clone(),
        };
        leaves.push((script, control));
    }
    Ok(TaprootOutput {
        script_pubkey: ScriptBuf::new_p2tr_tweaked(TweakedPublicKey::dangerous_assume_tweaked(output_key)),
        leaves,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptors::taproot_leaves;
    use bitcoin::bip32::ChildNumber;
    use std::str::FromStr;

    #[test]
    fn child_keys_match_rust_bitcoin() {
        let xpub = Xpub::from_str("tpubD6NzVbkrYhZ4XgiXtGrdW5XDAPFCL9h7we1vwNCpn8tGbBcgfVYjXyhWo4E1xkh56hjod1RhGjxbaTLV3X4FyWuejifB9jusQ46QzG87VKp").unwrap();
        for i in [0, 1, 2, 77, 1_000_000, (1 << 31) - 1] {
            let expected =
                xpub.derive_pub(secp(), &[ChildNumber::from_normal_idx(i).unwrap()]).unwrap().public_key;
            assert_eq!(child_public_key(&xpub, i).unwrap(), expected);
        }
    }

    #[test]
    fn taproot_outputs_match_miniscript() {
        let k = |i: u8| {
            XOnlyPublicKey::from_str(&format!(
                "{}",
                PublicKey::from_secret_key(secp(), &SecretKey::from_slice(&[i; 32]).unwrap())
                    .x_only_public_key()
                    .0
            ))
            .unwrap()
        };
        let texts = [
            format!("tr({},and_v(v:pk({}),pk({})))", crate::NUMS_POINT, k(1), k(2)),
            format!(
                "tr({},{{and_v(v:pk({}),pk({})),{{and_v(v:pk({}),older(5)),multi_a(2,{},{},{})}}}})",
                crate::NUMS_POINT,
                k(1),
                k(2),
                k(3),
                k(4),
                k(5),
                k(6)
            ),
            format!("tr({},{{pk({}),pk({})}})", k(9), k(7), k(8)),
        ];
        for text in texts {
            let d = Descriptor::<XOnlyPublicKey>::from_str(&text).unwrap();
            let fast = taproot_output(&d).unwrap();
            assert_eq!(fast.script_pubkey, d.script_pubkey(), "{text}");
            let slow = taproot_leaves(&d).unwrap();
            assert_eq!(fast.leaves.len(), slow.len());
            for ((fs, fc), (ss, sc)) in fast.leaves.iter().zip(&slow) {
                assert_eq!(fs, ss);
                assert_eq!(fc.serialize(), sc.serialize(), "{text}");
            }
        }
    }
}
