//! The embedded regtest chain with the example policy's keys: vaults created through the real
//! ceremony ([`vigil_client::Ceremony`]) and walked through their graph, all in-process.

use vigil_client::{Ceremony, Vault};
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxOut, Txid};
use vigil_policy::example::{ExampleKeys, ExamplePolicy, Signer};
use vigil_policy::{
    finalize, spend_psbt, ChangeTo, CompiledPolicy, FundingInput, OneTimeKey, Policy, PolicyError,
    SpendInput, VaultKind,
};
use vigil_regtest::{ChainError, RegtestChain, SubmitError};

/// Anything that can go wrong in a ceremony.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The policy refused.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The chain refused.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The pending pool refused.
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

/// A chain plus a policy and its example keys.
pub struct Env {
    /// The embedded chain.
    pub chain: RegtestChain,
    /// The example parameters.
    pub example: ExamplePolicy,
    /// Their private keys.
    pub keys: ExampleKeys,
    /// The compiled policy.
    pub compiled: CompiledPolicy,
    next_intake: u32,
    next_change: u32,
    next_vault: u32,
}

impl Env {
    /// A temporary chain with this example policy.
    pub fn new(example: ExamplePolicy) -> Result<Env, EnvError> {
        Env::with_chain(RegtestChain::new_temporary()?, example)
    }

    /// An existing chain with this example policy.
    pub fn with_chain(chain: RegtestChain, example: ExamplePolicy) -> Result<Env, EnvError> {
        let policy = Policy::from_toml(&example.to_toml())?;
        let compiled = CompiledPolicy::new(policy)?;
        Ok(Env {
            chain,
            keys: example.keys(),
            example,
            compiled,
            next_intake: 0,
            next_change: 0,
            next_vault: 0,
        })
    }

    /// Starts intake and vault derivation indices at `base` (a kept chain must not reuse them).
    pub fn skip_indices(&mut self, base: u32) {
        self.next_intake = self.next_intake.max(base);
        self.next_vault = self.next_vault.max(base);
    }

    /// Signs a PSBT with the given example keys.
    pub fn sign(&self, psbt: &mut Psbt, signers: &[Signer]) {
        self.keys.sign_psbt(psbt, signers)
    }

    /// The owner signers the policy needs (its threshold, from the first key).
    pub fn owners(&self) -> Vec<Signer> {
        (0..self.example.owner_threshold as usize).map(Signer::Owner).collect()
    }

    /// The guardian signers the policy needs (its threshold, from the first guardian).
    pub fn guardian_quorum(&self) -> Vec<Signer> {
        (0..self.example.guardian_threshold as usize).map(Signer::Guardian).collect()
    }

    /// Receives `amount` from the faucet at a fresh intake address and confirms it.
    pub fn receive(&mut self, amount: Amount) -> Result<FundingInput, EnvError> {
        let index = self.next_intake;
        self.next_intake += 1;
        let script = self.compiled.intake_descriptor(index)?.script_pubkey();
        let outpoint = self.chain.fund_confirmed(&script, amount)?;
        let txout = self.chain.coin(&outpoint).expect("just confirmed").txout;
        Ok(FundingInput { outpoint, txout, intake_index: index, change: false })
    }

    /// The whole ceremony for one vault of `amount`: receive, plan, build, sign the graph and
    /// the funding, wipe the one-time keys (no tower here), broadcast the funding, confirm it.
    pub fn create_vault(&mut self, amount: Amount, kind: VaultKind) -> Result<Vault, EnvError> {
        self.create_vault_with(amount, kind, OneTimeKey::generate(), OneTimeKey::generate())
    }

    /// [`Env::create_vault`] with given one-time keys (consumed and wiped).
    pub fn create_vault_with(
        &mut self,
        amount: Amount,
        kind: VaultKind,
        owner_once: OneTimeKey,
        cosigner_once: OneTimeKey,
    ) -> Result<Vault, EnvError> {
        let coin = self.receive(amount + Amount::from_sat(10_000))?;
        self.create_vault_from(&[coin], amount, kind, owner_once, cosigner_once)
    }

    /// [`Env::create_vault_with`] from `coins`; the change goes to the intake's change branch
    /// where the policy has one (format 2), else to a receive index.
    pub fn create_vault_from(
        &mut self,
        coins: &[FundingInput],
        amount: Amount,
        kind: VaultKind,
        owner_once: OneTimeKey,
        cosigner_once: OneTimeKey,
    ) -> Result<Vault, EnvError> {
        let index = self.next_vault;
        self.next_vault += 1;
        let change_branch = self.compiled.has_change_branch();
        let next = if change_branch { &mut self.next_change } else { &mut self.next_intake };
        *next += 1;
        let change = ChangeTo { index: *next - 1, change_branch };
        let vault =
            Ceremony { compiled: &self.compiled, coins, index, change, amount, kind, funding_sat_per_vb: 2 }
                .run(
                    owner_once,
                    cosigner_once,
                    &mut |psbt| self.keys.sign_psbt(psbt, &funding_signers(&self.example)),
                    &mut vigil_client::no_towers,
                )
                .map_err(PolicyError::from)?;
        self.chain.submit(&vault.funding)?;
        self.chain.mine(1)?;
        Ok(vault)
    }

    /// The change `vault`'s funding paid back to the intake, as a coin to fund another vault
    /// with (none when the change went to fees).
    pub fn change_of(&self, vault: &Vault) -> Option<FundingInput> {
        let txout = vault.funding.output.get(1)?.clone();
        let branch = self.compiled.has_change_branch();
        let index = (0..self.next_change.max(self.next_intake)).find(|i| {
            self.compiled
                .intake_descriptor_on(*i, branch)
                .is_ok_and(|d| d.script_pubkey() == txout.script_pubkey)
        })?;
        let outpoint = OutPoint { txid: vault.funding.compute_txid(), vout: 1 };
        Some(FundingInput { outpoint, txout, intake_index: index, change: branch })
    }

    /// The owner's delayed spend of U's spend leaf to `to` (owner + co-signer, plus the
    /// guardian quorum for guarded vaults), paying `fee`.
    pub fn delayed_spend(&self, vault: &Vault, to: ScriptBuf, fee: Amount) -> Result<Transaction, EnvError> {
        let mut signers = self.owners();
        signers.push(Signer::Cosigner);
        if vault.plan.kind == VaultKind::Guarded {
            signers.extend(self.guardian_quorum());
        }
        self.spend_with(
            SpendInput {
                outpoint: vault.unvault_outpoint(),
                txout: vault.unvault_txout(),
                descriptor: vault.descriptors.unvault.clone(),
                sequence: Sequence::from_height(self.example.delay as u16),
            },
            to,
            fee,
            &signers,
        )
    }

    /// A one-input spend to `to`, signed by `signers` and finalized.
    pub fn spend_with(
        &self,
        input: SpendInput,
        to: ScriptBuf,
        fee: Amount,
        signers: &[Signer],
    ) -> Result<Transaction, EnvError> {
        let value = input.txout.value - fee;
        let mut psbt = spend_psbt(&[input], vec![TxOut { value, script_pubkey: to }])?;
        self.sign(&mut psbt, signers);
        Ok(finalize(psbt)?)
    }

    /// Submits and mines one block; returns the txid.
    pub fn confirm(&mut self, tx: &Transaction) -> Result<Txid, EnvError> {
        let txid = self.chain.submit(tx)?;
        self.chain.mine(1)?;
        Ok(txid)
    }
}

/// Signs leaf `leaf` of `descriptor` for input 0 of `tx` with `keys` and builds the witness,
/// whatever the leaf's timelock says: for tests that show the kernel refusing a spend (a
/// timelock not met, a signer missing), where a PSBT finalizer would refuse to build one.
pub fn force_leaf_witness(
    tx: &mut Transaction,
    prevout: &TxOut,
    descriptor: &vigil_policy::miniscript::Descriptor<vigil_policy::miniscript::DefiniteDescriptorKey>,
    leaf: usize,
    keys: &[vigil_policy::bitcoin::secp256k1::Keypair],
) -> Result<(), String> {
    use std::collections::HashMap;
    use vigil_policy::bitcoin::hashes::Hash;
    use vigil_policy::bitcoin::secp256k1::{Message, Secp256k1, XOnlyPublicKey};
    use vigil_policy::bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
    use vigil_policy::bitcoin::taproot::{LeafVersion, TapLeafHash};
    use vigil_policy::bitcoin::Witness;
    use vigil_policy::miniscript::{Descriptor, Satisfier, ToPublicKey};

    struct Sigs(HashMap<XOnlyPublicKey, vigil_policy::bitcoin::taproot::Signature>);
    impl<Pk: ToPublicKey> Satisfier<Pk> for Sigs {
        fn lookup_tap_leaf_script_sig(
            &self,
            pk: &Pk,
            _: &TapLeafHash,
        ) -> Option<vigil_policy::bitcoin::taproot::Signature> {
            self.0.get(&pk.to_x_only_pubkey()).copied()
        }
        fn check_older(&self, _: vigil_policy::bitcoin::relative::LockTime) -> bool {
            true
        }
    }

    let secp = Secp256k1::new();
    let derived = descriptor.derived_descriptor(&secp).map_err(|e| e.to_string())?;
    let Descriptor::Tr(tr) = &derived else { return Err("not taproot".into()) };
    let (_, ms) = tr.iter_scripts().nth(leaf).ok_or_else(|| format!("no leaf {leaf}"))?;
    let script = ms.encode();
    let control =
        tr.spend_info().control_block(&(script.clone(), LeafVersion::TapScript)).ok_or("leaf not in tree")?;
    let leaf_hash = TapLeafHash::from_script(&script, LeafVersion::TapScript);
    let sighash = SighashCache::new(&*tx)
        .taproot_script_spend_signature_hash(
            0,
            &Prevouts::All(&[prevout]),
            leaf_hash,
            TapSighashType::Default,
        )
        .map_err(|e| e.to_string())?;
    let msg = Message::from_digest(sighash.to_byte_array());
    let sigs = keys
        .iter()
        .map(|k| {
            let signature = secp.sign_schnorr(&msg, k);
            (
                k.x_only_public_key().0,
                vigil_policy::bitcoin::taproot::Signature {
                    signature,
                    sighash_type: TapSighashType::Default,
                },
            )
        })
        .collect();
    let mut stack = ms.satisfy(Sigs(sigs)).map_err(|e| e.to_string())?;
    stack.push(script.to_bytes());
    stack.push(control.serialize());
    tx.input[0].witness = Witness::from_slice(&stack);
    Ok(())
}

impl Env {
    /// The key pair of an example signer in the first leaf it sits in on the vault chain
    /// (the unvault's spend leaf) at vault index `index`.
    pub fn vault_keypair(&self, who: Signer, index: u32) -> vigil_policy::bitcoin::secp256k1::Keypair {
        let [first, _] = vigil_policy::KeyChain::Vault.branches(self.compiled.policy().format);
        self.keys.keypair(who, first, index)
    }
}

/// Who signs a vault's funding among the example keys: the owner's threshold and the
/// co-signer.
pub fn funding_signers(example: &ExamplePolicy) -> Vec<Signer> {
    let mut signers: Vec<Signer> = (0..example.owner_threshold as usize).map(Signer::Owner).collect();
    signers.push(Signer::Cosigner);
    signers
}
