//! The one-time keys that sign a vault's graph and are then wiped, each party's signatures,
//! and the signed graph towers hold.

use bitcoin::bip32::{ChildNumber, Xpriv, Xpub};
use bitcoin::key::{Keypair, XOnlyPublicKey};
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::schnorr;
use bitcoin::NetworkKind;
use bitcoin::Transaction;

use crate::config::secp;
use crate::error::{DescriptorError, PolicyError, SignatureError};
use crate::graph::{PresignedTx, UnsignedGraph};

impl UnsignedGraph {
    /// Puts both parties' signatures in place. Each set must come from the plan's one-time
    /// key and cover every transaction; see [`GraphSignatures::verify`] to check them first.
    pub fn finalize(
        &self,
        owner: &GraphSignatures,
        cosigner: &GraphSignatures,
    ) -> Result<SignedGraph, PolicyError> {
        if owner.signer != self.plan.owner_once || cosigner.signer != self.plan.cosigner_once {
            return Err(SignatureError::NotTheVaultsKeys.into());
        }
        let count = self.transactions().count();
        if owner.signatures.len() != count || cosigner.signatures.len() != count {
            let given = owner.signatures.len().min(cosigner.signatures.len());
            return Err(SignatureError::Count { expected: count, given }.into());
        }
        let mut graph = self.clone();
        for ((ptx, o), c) in graph.transactions_mut().zip(&owner.signatures).zip(&cosigner.signatures) {
            // 64-byte signatures: SIGHASH_DEFAULT, the only type the graph uses.
            ptx.tx.input[0].witness = ptx.leaf.witness(o.as_ref(), c.as_ref());
        }
        Ok(SignedGraph { graph })
    }
}

/// A one-time key: fresh randomness, in memory only, signs exactly one vault's U, C, E, UE and
/// is then dropped, which wipes it (DESIGN.md §4 "One-time keys"). It cannot be serialized.
pub struct OneTimeKey {
    keypair: Keypair,
    /// The extended public key it is the child `/0/index` of, when made for a vault.
    xpub: Option<Xpub>,
}

impl OneTimeKey {
    /// A new key from the operating system's randomness.
    pub fn generate() -> OneTimeKey {
        OneTimeKey { keypair: Keypair::new(secp(), &mut bitcoin::secp256k1::rand::thread_rng()), xpub: None }
    }

    /// A new key for the vault at `index`: the child `/0/index` of an extended key made from
    /// fresh randomness, whose private part is wiped at once. The extended public key is kept
    /// ([`Self::xpub`]): a hardware signer registers the vault's unvault output with it, since
    /// a wallet policy derives every key at the vault's index (ADR 0005).
    pub fn for_vault(network: NetworkKind, index: u32) -> Result<OneTimeKey, PolicyError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        bitcoin::secp256k1::rand::RngCore::fill_bytes(
            &mut bitcoin::secp256k1::rand::thread_rng(),
            &mut *seed,
        );
        let mut master = Xpriv::new_master(network, &*seed).expect("32 bytes of seed");
        let path = [
            ChildNumber::from_normal_idx(0).expect("0"),
            ChildNumber::from_normal_idx(index).map_err(|_| DescriptorError::HardenedIndex(index))?,
        ];
        let mut child = master.derive_priv(secp(), &path).expect("a normal derivation");
        let xpub = Xpub::from_priv(secp(), &master);
        let keypair = child.to_keypair(secp());
        master.private_key.non_secure_erase();
        child.private_key.non_secure_erase();
        Ok(OneTimeKey { keypair, xpub: Some(xpub) })
    }

    /// The extended public key of a key made [`Self::for_vault`].
    pub fn xpub(&self) -> Option<Xpub> {
        self.xpub
    }

    /// The secret's bytes, only in builds with the `insecure-test-hooks` feature: tests use it
    /// to prove the secret never reaches a file or a returned value.
    #[cfg(feature = "insecure-test-hooks")]
    pub fn secret_bytes_for_tests(&self) -> [u8; 32] {
        self.keypair.secret_bytes()
    }

    /// Its public key.
    pub fn public(&self) -> XOnlyPublicKey {
        self.keypair.x_only_public_key().0
    }

    /// Signs every transaction of the graph (after checking the key belongs to it).
    pub fn sign(&self, graph: &UnsignedGraph) -> Result<GraphSignatures, PolicyError> {
        let me = self.public();
        if me != graph.plan.owner_once && me != graph.plan.cosigner_once {
            return Err(SignatureError::KeyNotInVault.into());
        }
        let signatures =
            graph.transactions().map(|t| secp().sign_schnorr(&t.sighash(), &self.keypair)).collect();
        Ok(GraphSignatures { signer: me, signatures })
    }
}

impl Drop for OneTimeKey {
    fn drop(&mut self) {
        self.keypair.non_secure_erase();
    }
}

impl std::fmt::Debug for OneTimeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OneTimeKey({})", self.public())
    }
}

/// One party's signatures over a graph, in canonical order ([`UnsignedGraph::transactions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSignatures {
    /// Whose.
    pub signer: XOnlyPublicKey,
    /// One per transaction.
    pub signatures: Vec<schnorr::Signature>,
}

impl GraphSignatures {
    /// Checks every signature against the graph (what each party does with the other's).
    pub fn verify(&self, graph: &UnsignedGraph) -> Result<(), PolicyError> {
        let count = graph.transactions().count();
        if self.signatures.len() != count {
            return Err(SignatureError::Count { expected: count, given: self.signatures.len() }.into());
        }
        for (i, (t, s)) in graph.transactions().zip(&self.signatures).enumerate() {
            secp()
                .verify_schnorr(s, &t.sighash(), &self.signer)
                .map_err(|_| SignatureError::Invalid { index: i, role: t.role.name() })?;
        }
        Ok(())
    }
}

/// A vault's graph with every transaction fully signed and final: what towers hold.
#[derive(Debug, Clone)]
pub struct SignedGraph {
    graph: UnsignedGraph,
}

impl SignedGraph {
    /// The graph, now with witnesses.
    pub fn graph(&self) -> &UnsignedGraph {
        &self.graph
    }

    /// U, signed.
    pub fn unvault(&self) -> &Transaction {
        &self.graph.unvault.tx
    }

    /// C at rung `i` (cheapest first).
    pub fn cancel(&self, i: usize) -> Option<&Transaction> {
        self.graph.cancels.get(i).map(|p| &p.tx)
    }

    /// E at rung `i`.
    pub fn emergency(&self, i: usize) -> Option<&Transaction> {
        self.graph.emergencies.get(i).map(|p| &p.tx)
    }

    /// UE at rung `i`.
    pub fn unvault_emergency(&self, i: usize) -> Option<&Transaction> {
        self.graph.unvault_emergencies.get(i).map(|p| &p.tx)
    }

    /// Every signed transaction, in canonical order.
    pub fn transactions(&self) -> impl Iterator<Item = &PresignedTx> {
        self.graph.transactions()
    }

    /// A signed transaction as a finalized PSBT.
    pub fn psbt(&self, tx: &PresignedTx) -> Result<Psbt, PolicyError> {
        tx.psbt(self.graph.plan.owner_once, self.graph.plan.cosigner_once)
    }
}

/// Whether `key` is the child `/0/index` of `xpub`: a vault's one-time key given with the
/// extended key it comes from.
pub fn is_vault_child(xpub: &Xpub, index: u32, key: XOnlyPublicKey) -> bool {
    let Ok(index) = ChildNumber::from_normal_idx(index) else { return false };
    xpub.derive_pub(secp(), &[ChildNumber::from_normal_idx(0).expect("0"), index])
        .is_ok_and(|child| child.public_key.x_only_public_key().0 == key)
}
