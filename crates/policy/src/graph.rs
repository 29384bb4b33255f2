//! The pre-signed vault transaction graph: V's funding, then U, C, E, UE (DESIGN.md §4).
//!
//! Building is deterministic: the same policy, vault index, amount, kind, funding outpoint and
//! one-time public keys give byte-identical unsigned transactions, so owner client, co-signer
//! and towers can each rebuild the graph and compare before signing or acknowledging.
//!
//! What must never change a txid is enforced here by construction: the graph's transactions
//! have one input each and are signed with `SIGHASH_DEFAULT` only (which commits to every
//! input and output); there is exactly one unvault per vault; the funding transaction spends
//! native segwit inputs only.

use std::collections::HashMap;

use bitcoin::hashes::Hash;
use bitcoin::key::XOnlyPublicKey;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::Message;
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::taproot::{ControlBlock, LeafVersion, TapLeafHash};
use bitcoin::transaction::Version;
use bitcoin::{Address, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxOut, Txid, Witness};
use miniscript::descriptor::{DefiniteDescriptorKey, DescriptorPublicKey};
use miniscript::Descriptor;

use crate::config::{KeyChain, Policy, PolicyFormat, PolicyKey, P2TR_DUST_SAT};
use crate::descriptors::{
    definite, nums, single, taproot_leaves, translate, KeyChainCache, Templates, VaultKind, SECOND,
};
use crate::error::{DescriptorError, PolicyError, PsbtError, TaprootError};
use crate::funding::FundingInput;
use crate::tx::{anchor_output, unsigned_tx, ANCHOR_SAT};
use crate::wallet_policy::{wallet_policy, WalletPolicy};

/// The pre-signed transactions are TRUC (version 3): one parent, one child, sibling eviction.
pub const GRAPH_TX_VERSION: Version = Version(3);

/// A policy compiled once into descriptor templates and cached key chains, from which any
/// number of vaults are built.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    policy: Policy,
    templates: Templates,
    intake_keys: KeyChainCache,
    /// The intake's change branch (format 2; none in format 1).
    intake_change_keys: Option<KeyChainCache>,
    vault_keys: KeyChainCache,
    sizes: GraphSizes,
    /// Each owner's and guardian's request-signing key, in the policy's order: derived
    /// once, since every authenticated request looks them up.
    owner_auth: Vec<XOnlyPublicKey>,
    guardian_auth: Vec<XOnlyPublicKey>,
}

/// A signature as a PSBT input holds it, under its (key, leaf).
pub type LeafSignature = ((XOnlyPublicKey, TapLeafHash), bitcoin::taproot::Signature);

/// The owner's signatures found valid on a vault spend's leaf, and the threshold.
#[derive(Debug, Clone)]
pub struct OwnerSignatures {
    /// Each valid signature under its (key, leaf), as a PSBT input holds it.
    pub valid: Vec<LeafSignature>,
    /// The owner's threshold.
    pub needed: u32,
}

impl OwnerSignatures {
    /// Whether the threshold is met.
    pub fn enough(&self) -> bool {
        self.valid.len() as u32 >= self.needed
    }
}

/// The deep vault's leaves at one index (see [`CompiledPolicy::deep_vault_leaves`]).
#[derive(Debug, Clone)]
pub struct DeepVaultLeaves {
    /// Backup + co-signer + every guardian, no wait.
    pub fast: ScriptBuf,
    /// Backup + the guardians' quorum after LONG.
    pub slow: ScriptBuf,
    /// The fast leaf's keys other than the co-signer's: the backup's, then every guardian's.
    pub fast_signers: Vec<XOnlyPublicKey>,
    /// The co-signer's key in it.
    pub cosigner: XOnlyPublicKey,
}

/// Virtual sizes of the graph's transactions; fixed by the graph's shape, not the policy.
#[derive(Debug, Clone, Copy)]
struct GraphSizes {
    unvault: u64,
    emergency: u64,
    /// Cancel and unvault-emergency have the same shape.
    from_unvault: u64,
}

/// Ranged descriptors of the policy's reusable outputs, with checksums, importable into
/// Bitcoin Core as they are.
#[derive(Debug, Clone)]
pub struct RangedDescriptors {
    /// Intake (receive) addresses.
    pub intake: String,
    /// Recovery outputs (where cancels go).
    pub recovery: String,
    /// The deep vault.
    pub deep_vault: String,
    /// The vault output, with `OO`/`CO` for the per-vault one-time keys.
    pub vault_template: String,
    /// The standard unvault output, with `OO`/`CO` for the one-time keys.
    pub unvault_standard_template: String,
    /// The guarded unvault output, with `OO`/`CO` for the one-time keys.
    pub unvault_guarded_template: String,
}

/// One vault's outputs as definite descriptors (keys at the vault's index, with origins).
#[derive(Debug, Clone)]
pub struct VaultDescriptors {
    /// V: the two one-time keys.
    pub vault: Descriptor<DefiniteDescriptorKey>,
    /// U: spend leaf, pre-signed leaf, recovery leaf.
    pub unvault: Descriptor<DefiniteDescriptorKey>,
    /// R: where cancels go.
    pub recovery: Descriptor<DefiniteDescriptorKey>,
    /// The deep vault: where emergencies go.
    pub deep_vault: Descriptor<DefiniteDescriptorKey>,
}

/// What identifies one vault, before its funding exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultPlan {
    /// The vault index (per-vault key derivation `/1/index`).
    pub index: u32,
    /// The value V holds.
    pub amount: Amount,
    /// Standard or guarded.
    pub kind: VaultKind,
    /// The owner's one-time key.
    pub owner_once: XOnlyPublicKey,
    /// The co-signer's one-time key.
    pub cosigner_once: XOnlyPublicKey,
}

impl CompiledPolicy {
    /// Compiles a validated policy.
    pub fn new(policy: Policy) -> Result<CompiledPolicy, PolicyError> {
        let templates = Templates::new(&policy)?;
        let intake_keys = KeyChainCache::new(&policy, KeyChain::Intake)?;
        let intake_change_keys = match policy.format {
            PolicyFormat::Shared => None,
            PolicyFormat::PerLeaf => Some(KeyChainCache::new(&policy, KeyChain::IntakeChange)?),
        };
        let vault_keys = KeyChainCache::new(&policy, KeyChain::Vault)?;
        let owner_auth = policy.owner.keys.iter().map(PolicyKey::auth_key).collect();
        let guardian_auth = policy.guardians.keys.iter().map(PolicyKey::auth_key).collect();
        let mut compiled = CompiledPolicy {
            policy,
            templates,
            intake_keys,
            intake_change_keys,
            vault_keys,
            sizes: GraphSizes { unvault: 0, emergency: 0, from_unvault: 0 },
            owner_auth,
            guardian_auth,
        };
        compiled.sizes = compiled.measure_sizes()?;
        // Format 2 exists for hardware signers: a shape they cannot register is refused now,
        // not met when a vault must be spent.
        if compiled.policy.format == PolicyFormat::PerLeaf {
            compiled.wallet_policies()?;
        }
        Ok(compiled)
    }

    /// Each output a hardware signer signs for, as a BIP-388 wallet policy (format 2): the
    /// intake, the unvault output of each kind (its one-time keys filled per vault), the
    /// recovery output R, and the deep vault (for the backup key's device).
    pub fn wallet_policies(&self) -> Result<Vec<WalletPolicy>, PolicyError> {
        let (t, format) = (&self.templates, self.policy.format);
        Ok(vec![
            wallet_policy(format, "Vigil intake", &t.intake, &self.intake_keys)?,
            wallet_policy(format, "Vigil vault", &t.unvault_standard, &self.vault_keys)?,
            wallet_policy(format, "Vigil guarded vault", &t.unvault_guarded, &self.vault_keys)?,
            wallet_policy(format, "Vigil recovery", &t.recovery, &self.vault_keys)?,
            wallet_policy(format, "Vigil deep vault", &t.deep_vault, &self.vault_keys)?,
        ])
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The owners' request-signing keys ([`PolicyKey::auth_key`]), in the policy's order.
    pub fn owner_auth_keys(&self) -> &[XOnlyPublicKey] {
        &self.owner_auth
    }

    /// The guardians' request-signing keys, in the policy's order.
    pub fn guardian_auth_keys(&self) -> &[XOnlyPublicKey] {
        &self.guardian_auth
    }

    /// The ranged descriptors (see [`RangedDescriptors`]).
    pub fn ranged_descriptors(&self) -> Result<RangedDescriptors, PolicyError> {
        let shown = |t: &Descriptor<String>, chain: &KeyChainCache| -> Result<String, PolicyError> {
            let keys = chain.ranged_keys();
            if !t.to_string().contains("OO") {
                return Ok(translate(t, &keys)?.to_string());
            }
            // One-time keys exist per vault only: keep their placeholders, and no checksum,
            // since this text is a template, not a descriptor.
            let mut names: HashMap<String, String> =
                keys.into_iter().map(|(k, v)| (k, v.to_string())).collect();
            names.insert("OO".into(), "OO".into());
            names.insert("CO".into(), "CO".into());
            let text = translate(t, &names)?.to_string();
            Ok(text.split('#').next().unwrap_or_default().to_owned())
        };
        Ok(RangedDescriptors {
            intake: shown(&self.templates.intake, &self.intake_keys)?,
            recovery: shown(&self.templates.recovery, &self.vault_keys)?,
            deep_vault: shown(&self.templates.deep_vault, &self.vault_keys)?,
            vault_template: shown(&self.templates.vault, &self.vault_keys)?,
            unvault_standard_template: shown(&self.templates.unvault_standard, &self.vault_keys)?,
            unvault_guarded_template: shown(&self.templates.unvault_guarded, &self.vault_keys)?,
        })
    }

    /// The intake descriptor at receive index `index`.
    pub fn intake_descriptor(&self, index: u32) -> Result<Descriptor<DefiniteDescriptorKey>, PolicyError> {
        self.intake_descriptor_on(index, false)
    }

    /// Whether a funding's change can go to the intake's change branch (format 2), where a
    /// hardware signer recognises it as its own change instead of showing it as a payment.
    pub fn has_change_branch(&self) -> bool {
        self.intake_change_keys.is_some()
    }

    /// The intake descriptor at `index` of the receive branch, or of the change branch
    /// (`change`, format 2 only: where a vault funding's change goes).
    pub fn intake_descriptor_on(
        &self,
        index: u32,
        change: bool,
    ) -> Result<Descriptor<DefiniteDescriptorKey>, PolicyError> {
        definite(translate(&self.templates.intake, &self.intake_chain(change)?.keys_with_origin(index)?)?)
    }

    /// The intake's keys on the receive branch, or on the change branch.
    fn intake_chain(&self, change: bool) -> Result<&KeyChainCache, PolicyError> {
        match change {
            false => Ok(&self.intake_keys),
            true => self.intake_change_keys.as_ref().ok_or(PolicyError::NoChangeBranch),
        }
    }

    /// The intake address at receive index `index`.
    pub fn intake_address(&self, index: u32) -> Result<Address, PolicyError> {
        let script = self.intake_descriptor(index)?.script_pubkey();
        Ok(Address::from_script(&script, self.policy.network).map_err(DescriptorError::from)?)
    }

    /// One vault's outputs as definite descriptors.
    pub fn vault_descriptors(&self, plan: &VaultPlan) -> Result<VaultDescriptors, PolicyError> {
        let keys = self.plan_keys(plan)?;
        Ok(VaultDescriptors {
            vault: definite(translate(&self.templates.vault, &keys)?)?,
            unvault: definite(translate(self.templates.unvault(plan.kind), &keys)?)?,
            recovery: definite(translate(&self.templates.recovery, &keys)?)?,
            deep_vault: definite(translate(&self.templates.deep_vault, &keys)?)?,
        })
    }

    /// Only U's descriptor of [`Self::vault_descriptors`]: what a spend of the vault needs,
    /// without translating the three others (the co-signer does this per spend request).
    pub fn unvault_descriptor(
        &self,
        plan: &VaultPlan,
    ) -> Result<Descriptor<DefiniteDescriptorKey>, PolicyError> {
        definite(translate(self.templates.unvault(plan.kind), &self.plan_keys(plan)?)?)
    }

    /// Every placeholder of `plan`'s descriptors: the policy's keys at its index, with their
    /// origins, and its two one-time keys.
    fn plan_keys(&self, plan: &VaultPlan) -> Result<HashMap<String, DescriptorPublicKey>, PolicyError> {
        let mut keys = self.vault_keys.keys_with_origin(plan.index)?;
        keys.insert("OO".into(), single(plan.owner_once));
        keys.insert("CO".into(), single(plan.cosigner_once));
        Ok(keys)
    }

    /// The recovery leaf's script (owner + guardians after T_RECOVER) at `index`, on the
    /// intake chain (its receive and, in format 2, its change branch) and on the vault chain
    /// (the unvault and recovery outputs share it): the only leaves a guardian signs when the
    /// owner recovers without the co-signer.
    pub fn recovery_leaf_scripts(&self, index: u32) -> Result<Vec<ScriptBuf>, PolicyError> {
        let chains =
            std::iter::once(&self.intake_keys).chain(&self.intake_change_keys).chain([&self.vault_keys]);
        chains.map(|keys| self.recover_leaf(&keys.xonly_at(index)?)).collect()
    }

    /// The recovery leaf's script with `keys` (one index of one chain).
    fn recover_leaf(&self, keys: &HashMap<String, XOnlyPublicKey>) -> Result<ScriptBuf, PolicyError> {
        let Descriptor::Tr(tr) = translate(&self.templates.recover_leaf, keys)? else {
            unreachable!("a tr() template")
        };
        let (_, ms) = tr.iter_scripts().next().expect("one leaf");
        Ok(ms.encode())
    }

    /// The owner's valid signatures (SIGHASH_DEFAULT) on the spend leaf of `plan`'s unvault
    /// output on input `input` of `psbt`, and how many must be there: a vault spend request
    /// short of the owner's threshold would be approved, its unvault sent, and then never
    /// complete. Nothing else the input carries is returned, so a caller keeps only these.
    pub fn owner_spend_signatures(
        &self,
        plan: &VaultPlan,
        psbt: &Psbt,
        input: usize,
    ) -> Result<OwnerSignatures, PolicyError> {
        let (keys, leaf) = self.spend_leaf(plan)?;
        let valid = leaf_signatures(&keys, &self.templates.owner_names, &leaf, psbt, input)?;
        Ok(OwnerSignatures { valid, needed: self.policy.owner.threshold })
    }

    /// Guardian `guardian`'s valid signature (SIGHASH_DEFAULT) on the spend leaf of `plan`'s
    /// guarded unvault output on input `input` of `psbt`, if it is there: a vote whose
    /// signature would not verify would leave an approved spend that can never complete.
    pub fn guardian_spend_signature(
        &self,
        plan: &VaultPlan,
        guardian: usize,
        psbt: &Psbt,
        input: usize,
    ) -> Result<Option<LeafSignature>, PolicyError> {
        let (keys, leaf) = self.spend_leaf(plan)?;
        Ok(leaf_signatures(&keys, &[format!("G{guardian}")], &leaf, psbt, input)?.pop())
    }

    /// The keys at `plan`'s index and the script of its unvault output's spend leaf.
    fn spend_leaf(
        &self,
        plan: &VaultPlan,
    ) -> Result<(HashMap<String, XOnlyPublicKey>, ScriptBuf), PolicyError> {
        let keys = self.vault_keys.xonly_at(plan.index)?;
        let template = match plan.kind {
            VaultKind::Standard => &self.templates.spend_leaf_standard,
            VaultKind::Guarded => &self.templates.spend_leaf_guarded,
        };
        let Descriptor::Tr(tr) = translate(template, &keys)? else { unreachable!("a tr() template") };
        let (_, ms) = tr.iter_scripts().next().expect("one leaf");
        Ok((keys, ms.encode()))
    }

    /// The owner's valid signatures on each input of a vault's funding `psbt` spending
    /// `coins`, on the intake leaf the owner spends with the co-signer (as
    /// [`Self::owner_spend_signatures`]): what a funding signed elsewhere must carry.
    pub fn owner_funding_signatures(
        &self,
        coins: &[FundingInput],
        psbt: &Psbt,
    ) -> Result<Vec<OwnerSignatures>, PolicyError> {
        self.owner_funding_signatures_from(&[], coins, psbt)
    }

    /// [`Self::owner_funding_signatures`] for a funding built by
    /// [`Self::funding_psbt_from`]: each coin on its own version's leaf.
    pub fn owner_funding_signatures_from(
        &self,
        earlier: &[&CompiledPolicy],
        coins: &[FundingInput],
        psbt: &Psbt,
    ) -> Result<Vec<OwnerSignatures>, PolicyError> {
        let spent: Vec<OutPoint> = psbt.unsigned_tx.input.iter().map(|i| i.previous_output).collect();
        if spent != coins.iter().map(|c| c.outpoint).collect::<Vec<_>>() {
            return Err(PsbtError::OtherInputs.into());
        }
        coins
            .iter()
            .enumerate()
            .map(|(input, coin)| {
                let source = self.intake_source(earlier, input, coin)?;
                let keys = source.intake_chain(coin.change)?.xonly_at(coin.intake_index)?;
                let recover = source.recover_leaf(&keys)?;
                let Descriptor::Tr(tr) = translate(&source.templates.intake, &keys)? else {
                    unreachable!("a tr() template")
                };
                let cosigned = tr
                    .iter_scripts()
                    .map(|(_, ms)| ms.encode())
                    .find(|s| *s != recover)
                    .expect("the intake's leaf with the co-signer");
                let valid = leaf_signatures(&keys, &source.templates.owner_names, &cosigned, psbt, input)?;
                Ok(OwnerSignatures { valid, needed: source.policy.owner.threshold })
            })
            .collect()
    }

    /// The deep vault's output at vault index `index` (it holds no one-time key): what E and
    /// UE pay to.
    pub fn deep_vault_descriptor(
        &self,
        index: u32,
    ) -> Result<Descriptor<DefiniteDescriptorKey>, PolicyError> {
        definite(translate(&self.templates.deep_vault, &self.vault_keys.keys_with_origin(index)?)?)
    }

    /// The deep vault's two leaves at `index`: the fast path (backup + co-signer + every
    /// guardian, no wait) and the slow path (backup + the guardians' quorum after LONG), with
    /// the keys other than the co-signer's that the fast path needs.
    pub fn deep_vault_leaves(&self, index: u32) -> Result<DeepVaultLeaves, PolicyError> {
        let keys = self.vault_keys.xonly_at(index)?;
        let d = translate(&self.templates.deep_vault, &keys)?;
        let Descriptor::Tr(tr) = d else { unreachable!("a tr() template") };
        let mut fast = None;
        let mut slow = None;
        for (_, ms) in tr.iter_scripts() {
            let has_wait = ms
                .encode()
                .instructions()
                .any(|i| matches!(i, Ok(bitcoin::script::Instruction::Op(bitcoin::opcodes::all::OP_CSV))));
            if has_wait {
                slow = Some(ms.encode());
            } else {
                fast = Some(ms.encode());
            }
        }
        // Their keys in the fast leaf, the second they sit in.
        let mut fast_signers = vec![keys[&format!("B{SECOND}")]];
        fast_signers.extend((0..self.policy.guardians.keys.len()).map(|i| keys[&format!("G{i}{SECOND}")]));
        Ok(DeepVaultLeaves {
            fast: fast.expect("the deep vault has a fast leaf"),
            slow: slow.expect("the deep vault has a slow leaf"),
            fast_signers,
            cosigner: keys["C"],
        })
    }

    /// A vault plan, checking the amount against this policy.
    pub fn plan(
        &self,
        index: u32,
        amount: Amount,
        kind: VaultKind,
        owner_once: XOnlyPublicKey,
        cosigner_once: XOnlyPublicKey,
    ) -> Result<VaultPlan, PolicyError> {
        if amount > Amount::MAX_MONEY {
            return Err(PolicyError::AmountTooLarge(amount));
        }
        let minimum = self.min_vault_amount();
        if amount < minimum {
            return Err(PolicyError::AmountTooSmall { amount, minimum });
        }
        let limit = Amount::from_sat(self.policy.allowance.velocity_limit_sat);
        if kind == VaultKind::Standard && amount > limit {
            return Err(PolicyError::StandardVaultTooLarge { amount, limit });
        }
        Ok(VaultPlan { index, amount, kind, owner_once, cosigner_once })
    }

    /// The kind a vault of `amount` must be: standard up to the velocity limit, guarded above.
    pub fn kind_for(&self, amount: Amount) -> VaultKind {
        if amount.to_sat() <= self.policy.allowance.velocity_limit_sat {
            VaultKind::Standard
        } else {
            VaultKind::Guarded
        }
    }

    /// The smallest vault whose graph pays every fee at the lowest rung and leaves every
    /// output above dust.
    pub fn min_vault_amount(&self) -> Amount {
        let rung0 = self.policy.fees.ladder_sat_per_vb[0];
        let via_unvault = self.sizes.unvault * self.policy.fees.unvault_sat_per_vb
            + ANCHOR_SAT
            + self.sizes.from_unvault * rung0
            + ANCHOR_SAT
            + P2TR_DUST_SAT;
        let via_emergency = self.sizes.emergency * rung0 + ANCHOR_SAT + P2TR_DUST_SAT;
        Amount::from_sat(via_unvault.max(via_emergency))
    }

    /// The output V of a planned vault.
    pub fn vault_output(&self, plan: &VaultPlan) -> Result<TxOut, PolicyError> {
        let keys = self.once_keys_only(plan)?;
        Ok(TxOut {
            value: plan.amount,
            script_pubkey: translate(&self.templates.vault, &keys)?.script_pubkey(),
        })
    }

    fn once_keys_only(&self, plan: &VaultPlan) -> Result<HashMap<String, XOnlyPublicKey>, PolicyError> {
        Ok(HashMap::from([
            ("NUMS".into(), self.vault_keys.internal_key(plan.index)?),
            ("OO".into(), plan.owner_once),
            ("CO".into(), plan.cosigner_once),
        ]))
    }

    /// Sizes of the graph's transactions, measured on a dummy vault with full-size witnesses.
    fn measure_sizes(&self) -> Result<GraphSizes, PolicyError> {
        let dummy = nums();
        let plan = VaultPlan {
            index: 0,
            amount: Amount::from_sat(1_000_000),
            kind: VaultKind::Standard,
            owner_once: dummy,
            cosigner_once: dummy,
        };
        let mut keys = self.vault_keys.xonly_at(0)?;
        keys.insert("OO".into(), dummy);
        keys.insert("CO".into(), dummy);
        let vault = translate(&self.templates.vault, &keys)?;
        let unvault = translate(self.templates.unvault(plan.kind), &keys)?;
        let v_leaf = once_leaf(&vault)?;
        let u_leaf = once_leaf(&unvault)?;
        let size = |leaf: &OnceLeaf| {
            let mut tx = one_input_tx(
                OutPoint::null(),
                vec![TxOut { value: Amount::ZERO, script_pubkey: unvault.script_pubkey() }],
            );
            tx.input[0].witness = leaf.witness(&[0u8; 64], &[0u8; 64]);
            tx.weight().to_vbytes_ceil()
        };
        let (v, u) = (size(&v_leaf), size(&u_leaf));
        Ok(GraphSizes { unvault: v, emergency: v, from_unvault: u })
    }

    /// Builds a vault's unsigned graph on its funding outpoint.
    pub fn build_graph(
        &self,
        plan: &VaultPlan,
        vault_outpoint: OutPoint,
    ) -> Result<UnsignedGraph, PolicyError> {
        let mut keys = self.vault_keys.xonly_at(plan.index)?;
        keys.insert("OO".into(), plan.owner_once);
        keys.insert("CO".into(), plan.cosigner_once);
        // Outputs through the fast tweak (see `fast`); tests check it against miniscript.
        let vault = crate::fast::taproot_output(&translate(&self.templates.vault, &keys)?)?;
        let unvault = crate::fast::taproot_output(&translate(self.templates.unvault(plan.kind), &keys)?)?;
        let recovery_spk =
            crate::fast::taproot_output(&translate(&self.templates.recovery, &keys)?)?.script_pubkey;
        let deep_spk =
            crate::fast::taproot_output(&translate(&self.templates.deep_vault, &keys)?)?.script_pubkey;
        let v_leaf = std::sync::Arc::new(OnceLeaf::new(&vault.leaves)?);
        let u_leaf = std::sync::Arc::new(OnceLeaf::new(&unvault.leaves)?);
        let fees = &self.policy.fees;
        let vault_txout = TxOut { value: plan.amount, script_pubkey: vault.script_pubkey };

        let unvault_fee = Amount::from_sat(self.sizes.unvault * fees.unvault_sat_per_vb);
        let unvault_value = plan
            .amount
            .checked_sub(unvault_fee + Amount::from_sat(ANCHOR_SAT))
            .ok_or(PolicyError::AmountTooSmall { amount: plan.amount, minimum: self.min_vault_amount() })?;
        let unvault_txout = TxOut { value: unvault_value, script_pubkey: unvault.script_pubkey };
        let unvault_tx = one_input_tx(vault_outpoint, vec![unvault_txout.clone(), anchor_output()]);
        let unvault_outpoint = OutPoint { txid: unvault_tx.compute_txid(), vout: 0 };
        let unvault_presigned = PresignedTx {
            role: GraphRole::Unvault,
            feerate_sat_per_vb: fees.unvault_sat_per_vb,
            fee: unvault_fee,
            tx: unvault_tx,
            prevout: vault_txout.clone(),
            leaf: v_leaf.clone(),
        };

        // A rung is signed if it is the lowest, or costs at most max_fee_percent of the vault,
        // and leaves a non-dust output.
        let cap = plan.amount.to_sat() / 100 * fees.max_fee_percent
            + plan.amount.to_sat() % 100 * fees.max_fee_percent / 100;
        let ladder = |role: GraphRole,
                      outpoint: OutPoint,
                      prevout: &TxOut,
                      leaf: &std::sync::Arc<OnceLeaf>,
                      to: &ScriptBuf,
                      vsize: u64| {
            let mut rungs = Vec::new();
            for (i, rate) in fees.ladder_sat_per_vb.iter().enumerate() {
                let fee = vsize * rate;
                if i > 0 && fee > cap {
                    break;
                }
                let Some(value) = prevout.value.to_sat().checked_sub(fee + ANCHOR_SAT) else { break };
                if value < P2TR_DUST_SAT {
                    break;
                }
                rungs.push(PresignedTx {
                    role,
                    feerate_sat_per_vb: *rate,
                    fee: Amount::from_sat(fee),
                    tx: one_input_tx(
                        outpoint,
                        vec![
                            TxOut { value: Amount::from_sat(value), script_pubkey: to.clone() },
                            anchor_output(),
                        ],
                    ),
                    prevout: prevout.clone(),
                    leaf: leaf.clone(),
                });
            }
            rungs
        };
        let cancels = ladder(
            GraphRole::Cancel,
            unvault_outpoint,
            &unvault_txout,
            &u_leaf,
            &recovery_spk,
            self.sizes.from_unvault,
        );
        let emergencies = ladder(
            GraphRole::Emergency,
            vault_outpoint,
            &vault_txout,
            &v_leaf,
            &deep_spk,
            self.sizes.emergency,
        );
        let unvault_emergencies = ladder(
            GraphRole::UnvaultEmergency,
            unvault_outpoint,
            &unvault_txout,
            &u_leaf,
            &deep_spk,
            self.sizes.from_unvault,
        );
        if cancels.is_empty() || emergencies.is_empty() || unvault_emergencies.is_empty() {
            return Err(PolicyError::AmountTooSmall {
                amount: plan.amount,
                minimum: self.min_vault_amount(),
            });
        }
        Ok(UnsignedGraph {
            plan: plan.clone(),
            vault_outpoint,
            vault_txout,
            unvault: unvault_presigned,
            cancels,
            emergencies,
            unvault_emergencies,
        })
    }
}

/// A graph transaction: TRUC, one input, replaceable.
fn one_input_tx(outpoint: OutPoint, output: Vec<TxOut>) -> Transaction {
    unsigned_tx(GRAPH_TX_VERSION, [(outpoint, Sequence::ENABLE_RBF_NO_LOCKTIME)], output)
}

/// The pre-signed leaf `and_v(v:pk(OO),pk(CO))` of V or U, ready to witness.
#[derive(Debug)]
pub(crate) struct OnceLeaf {
    script: ScriptBuf,
    control: ControlBlock,
    hash: TapLeafHash,
}

impl OnceLeaf {
    /// `<OO> CHECKSIGVERIFY <CO> CHECKSIG` pops the owner's signature first, so it is on top.
    pub(crate) fn witness(&self, owner_sig: &[u8], cosigner_sig: &[u8]) -> Witness {
        Witness::from_slice(&[cosigner_sig, owner_sig, self.script.as_bytes(), &self.control.serialize()])
    }
}

impl OnceLeaf {
    /// The one-time leaf is listed first in both the vault's and the unvault's templates.
    fn new(leaves: &[(ScriptBuf, ControlBlock)]) -> Result<OnceLeaf, PolicyError> {
        let (script, control) = leaves.first().cloned().ok_or(TaprootError::LeafMissing)?;
        let hash = TapLeafHash::from_script(&script, LeafVersion::TapScript);
        Ok(OnceLeaf { script, control, hash })
    }
}

fn once_leaf(d: &Descriptor<XOnlyPublicKey>) -> Result<OnceLeaf, PolicyError> {
    OnceLeaf::new(&taproot_leaves(d)?)
}

/// Which transaction of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphRole {
    /// U: V -> unvault output (+ anchor).
    Unvault,
    /// C: U -> recovery (+ anchor).
    Cancel,
    /// E: V -> deep vault (+ anchor).
    Emergency,
    /// UE: U -> deep vault (+ anchor).
    UnvaultEmergency,
}

impl GraphRole {
    /// Its name in DESIGN.md's notation.
    pub fn name(&self) -> &'static str {
        match self {
            GraphRole::Unvault => "U",
            GraphRole::Cancel => "C",
            GraphRole::Emergency => "E",
            GraphRole::UnvaultEmergency => "UE",
        }
    }
}

/// One pre-signed transaction of the graph, before or after signing.
#[derive(Debug, Clone)]
pub struct PresignedTx {
    /// Which one.
    pub role: GraphRole,
    /// Its feerate, sat/vB.
    pub feerate_sat_per_vb: u64,
    /// Its fee.
    pub fee: Amount,
    /// The transaction (unsigned in an [`UnsignedGraph`]).
    pub tx: Transaction,
    /// The output it spends.
    pub prevout: TxOut,
    pub(crate) leaf: std::sync::Arc<OnceLeaf>,
}

impl PresignedTx {
    /// The message both one-time keys sign: BIP341 script-path sighash, `SIGHASH_DEFAULT`.
    pub fn sighash(&self) -> Message {
        let hash = SighashCache::new(&self.tx)
            .taproot_script_spend_signature_hash(
                0,
                &Prevouts::All(&[&self.prevout]),
                self.leaf.hash,
                TapSighashType::Default,
            )
            .expect("one input, one prevout");
        Message::from_digest(hash.to_byte_array())
    }

    /// The unsigned transaction as a PSBT, with everything a signer needs.
    pub fn psbt(
        &self,
        owner_once: XOnlyPublicKey,
        cosigner_once: XOnlyPublicKey,
    ) -> Result<Psbt, PolicyError> {
        let mut psbt = Psbt::from_unsigned_tx(strip(&self.tx)).map_err(PsbtError::from)?;
        let input = &mut psbt.inputs[0];
        input.witness_utxo = Some(self.prevout.clone());
        input.sighash_type = Some(TapSighashType::Default.into());
        input.tap_internal_key = Some(self.leaf.control.internal_key);
        input
            .tap_scripts
            .insert(self.leaf.control.clone(), (self.leaf.script.clone(), LeafVersion::TapScript));
        for key in [owner_once, cosigner_once] {
            input.tap_key_origins.insert(key, (vec![self.leaf.hash], Default::default()));
        }
        if !self.tx.input[0].witness.is_empty() {
            input.final_script_witness = Some(self.tx.input[0].witness.clone());
        }
        Ok(psbt)
    }
}

fn strip(tx: &Transaction) -> Transaction {
    let mut tx = tx.clone();
    tx.input.iter_mut().for_each(|i| i.witness.clear());
    tx
}

/// A vault's graph, unsigned.
#[derive(Debug, Clone)]
pub struct UnsignedGraph {
    /// The vault.
    pub plan: VaultPlan,
    /// V.
    pub vault_outpoint: OutPoint,
    /// V's output.
    pub vault_txout: TxOut,
    /// U (exactly one).
    pub unvault: PresignedTx,
    /// C at every rung, cheapest first.
    pub cancels: Vec<PresignedTx>,
    /// E at every rung, cheapest first.
    pub emergencies: Vec<PresignedTx>,
    /// UE at every rung, cheapest first.
    pub unvault_emergencies: Vec<PresignedTx>,
}

impl UnsignedGraph {
    /// Every transaction, in the canonical order signatures follow: U, C.., E.., UE...
    pub fn transactions(&self) -> impl Iterator<Item = &PresignedTx> {
        std::iter::once(&self.unvault)
            .chain(&self.cancels)
            .chain(&self.emergencies)
            .chain(&self.unvault_emergencies)
    }

    pub(crate) fn transactions_mut(&mut self) -> impl Iterator<Item = &mut PresignedTx> {
        std::iter::once(&mut self.unvault)
            .chain(&mut self.cancels)
            .chain(&mut self.emergencies)
            .chain(&mut self.unvault_emergencies)
    }

    /// U's txid (it does not depend on signatures).
    pub fn unvault_txid(&self) -> Txid {
        self.unvault.tx.compute_txid()
    }
}

/// The valid SIGHASH_DEFAULT signatures of the keys named `names` (in `keys`) on `leaf` for
/// input `input` of `psbt`.
fn leaf_signatures(
    keys: &HashMap<String, XOnlyPublicKey>,
    names: &[String],
    leaf: &ScriptBuf,
    psbt: &Psbt,
    input: usize,
) -> Result<Vec<LeafSignature>, PolicyError> {
    let leaf = TapLeafHash::from_script(leaf, LeafVersion::TapScript);
    let prevouts: Vec<TxOut> = psbt.inputs.iter().filter_map(|i| i.witness_utxo.clone()).collect();
    if prevouts.len() != psbt.inputs.len() {
        return Err(PsbtError::MissingUtxo.into());
    }
    let sighash = SighashCache::new(&psbt.unsigned_tx)
        .taproot_script_spend_signature_hash(input, &Prevouts::All(&prevouts), leaf, TapSighashType::Default)
        .map_err(PsbtError::from)?;
    let msg = Message::from_digest(sighash.to_byte_array());
    Ok(names
        .iter()
        .filter_map(|name| {
            let key = *keys.get(name)?;
            let sig = *psbt.inputs.get(input)?.tap_script_sigs.get(&(key, leaf))?;
            (sig.sighash_type == TapSighashType::Default
                && crate::config::secp().verify_schnorr(&sig.signature, &msg, &key).is_ok())
            .then_some(((key, leaf), sig))
        })
        .collect())
}
