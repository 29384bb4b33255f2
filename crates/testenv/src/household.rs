//! A household on a node, with the example policy's keys: vaults through the real ceremony,
//! funded from the test wallet, registered and approved at towers over their signed API.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use vigil_chain::{BitcoindRpc, ChainBackend};
use vigil_client::{Ceremony, Vault};
use vigil_policy::bitcoin::secp256k1::Keypair;
use vigil_policy::bitcoin::{Amount, Transaction, Txid};
use vigil_policy::example::{auth_keypair, ExampleKeys, ExamplePolicy, Signer};
use vigil_policy::{CompiledPolicy, FundingInput, OneTimeKey, Policy, VaultKind};
use vigil_tower::wire::{self, Approval, RegisterApproval, RegisterVault};

use crate::process::{Node, TowerApi};
use crate::wallet::{mine, Wallet};

/// DELAY of the test policies.
pub const DELAY: u32 = 20;

/// The example policy of the process tests: DELAY 20, one tower.
pub fn example(seed: &str) -> ExamplePolicy {
    ExamplePolicy {
        seed: seed.into(),
        delay: DELAY,
        recovery: 40,
        deep_vault: 60,
        towers: 1,
        ..ExamplePolicy::default()
    }
}

/// What a refused request answered: its HTTP status (0 when there was none) and body.
pub type Refused = (u16, String);

/// The owner's side: policy, keys, a wallet with coinbase coins on the node.
pub struct Household {
    /// The example parameters.
    pub example: ExamplePolicy,
    /// Their private keys.
    pub keys: ExampleKeys,
    /// The compiled policy.
    pub compiled: CompiledPolicy,
    /// The client's id at towers.
    pub policy_id: String,
    /// The policy file.
    pub policy_path: PathBuf,
    /// The wallet vaults are funded from.
    pub wallet: Wallet,
    /// The policy version approvals are given under.
    pub policy_version: u32,
    /// Towers the ceremony registers each vault with before its one-time keys are wiped
    /// (empty: the test registers it itself, to exercise a tower's checks).
    pub towers: Vec<TowerApi>,
    next_coin: u32,
    next_index: u32,
    nonce: std::cell::Cell<u64>,
}

impl Household {
    /// A household whose policy file is written to `dir`; mines the wallet's coins on `node`
    /// if the chain is new.
    pub fn new(dir: &std::path::Path, node: &Node, example: ExamplePolicy) -> Household {
        let text = example.to_toml();
        let policy_path = dir.join(format!("policy-{}.toml", example.seed.replace(' ', "-")));
        std::fs::write(&policy_path, &text).unwrap();
        let compiled = CompiledPolicy::new(Policy::from_toml(&text).unwrap()).unwrap();
        let wallet = Wallet::new();
        if node.rpc.block_hash(1).unwrap().is_none() {
            mine(&node.rpc, 300, &wallet.address());
        }
        Household {
            keys: example.keys(),
            example,
            compiled,
            policy_id: vigil_tower::policy_id(&text),
            policy_path,
            wallet,
            policy_version: 1,
            towers: Vec::new(),
            next_coin: 1,
            next_index: 0,
            nonce: Default::default(),
        }
    }

    /// Funds later vaults from the coinbases from `height` on (another household on the same
    /// node must not spend the same coins).
    pub fn use_coins_from(&mut self, height: u32) {
        self.next_coin = height;
    }

    /// A vault through the whole ceremony; its funding is returned, not broadcast.
    pub fn create_vault(&mut self, rpc: &BitcoindRpc, amount: Amount, kind: VaultKind) -> Vault {
        let index = self.next_index;
        self.next_index += 2;
        self.vault_at(rpc, index, amount, kind, OneTimeKey::generate(), OneTimeKey::generate())
    }

    /// A vault at derivation `index` with the given one-time keys (consumed), funded from the
    /// next coinbase; its funding is returned, not broadcast.
    pub fn vault_at(
        &mut self,
        rpc: &BitcoindRpc,
        index: u32,
        amount: Amount,
        kind: VaultKind,
        owner_once: OneTimeKey,
        cosigner_once: OneTimeKey,
    ) -> Vault {
        let coin_height = self.next_coin;
        self.next_coin += 1;
        let script = self.compiled.intake_descriptor(index).unwrap().script_pubkey();
        let (outpoint, txout) = self.wallet.pay(rpc, coin_height, script, amount + Amount::from_sat(20_000));
        let coin = FundingInput { outpoint, txout, intake_index: index, change: false };
        let signers = [Signer::Owner(0), Signer::Cosigner];
        Ceremony {
            compiled: &self.compiled,
            coins: std::slice::from_ref(&coin),
            index,
            change: vigil_policy::ChangeTo { index: index + 1, change_branch: false },
            amount,
            kind,
            funding_sat_per_vb: 2,
        }
        .run(owner_once, cosigner_once, &mut |psbt| self.keys.sign_psbt(psbt, &signers), &mut |vault| {
            self.towers.iter().try_for_each(|t| {
                let req = RegisterVault::new(
                    &self.policy_id,
                    self.next_nonce(),
                    &vault.plan,
                    &vault.graph,
                    Some(&vault.funding),
                );
                post(t, "/v1/vaults", &serde_json::to_vec(&req).unwrap(), &self.owner_auth()).map(drop)
            })
        })
        .unwrap()
    }

    /// The owner's request-signing key.
    pub fn owner_auth(&self) -> Keypair {
        auth_keypair(&self.keys.owners[0])
    }

    /// The next nonce of the household's keys.
    pub fn next_nonce(&self) -> u64 {
        self.nonce.set(self.nonce.get() + 1);
        self.nonce.get()
    }

    /// A lift of the lockdown ending at `until`, at `at`, signed by guardians 0 and 1 (the
    /// example's quorum), with a fresh nonce.
    pub fn lift(&self, at: u32, until: u32) -> wire::LiftLockdown {
        let digest = wire::lift_digest(&self.policy_id, at, until);
        wire::LiftLockdown {
            nonce: self.next_nonce(),
            policy_id: self.policy_id.clone(),
            lift_at_height: at,
            lockdown_until: until,
            signatures: (0..2).map(|g| wire::sign(&digest, &auth_keypair(&self.keys.guardians[g]))).collect(),
        }
    }

    /// The policy at `version` with its velocity limit `velocity_sat`, its other terms the
    /// example's: a loosening above the example's 10,000,000 sat, a tightening below.
    pub fn policy_at(&self, version: u32, velocity_sat: u64) -> String {
        self.example
            .to_toml()
            .replace("version = 1", &format!("version = {version}"))
            .replace("velocity_limit_sat = 10000000", &format!("velocity_limit_sat = {velocity_sat}"))
    }

    /// A change to the policy `text`, signed by guardians `signers`, with a fresh nonce.
    pub fn policy_change(&self, text: &str, signers: &[usize]) -> wire::ChangePolicy {
        let digest = wire::policy_change_digest(&self.policy_id, text);
        wire::ChangePolicy {
            nonce: self.next_nonce(),
            policy_id: self.policy_id.clone(),
            policy: text.to_owned(),
            signatures: signers
                .iter()
                .map(|g| wire::sign(&digest, &auth_keypair(&self.keys.guardians[*g])))
                .collect(),
            not_before_height: None,
        }
    }

    /// Registers `vault` (with its funding) at a tower, signed by the owner.
    pub fn register(&mut self, tower: &TowerApi, vault: &Vault) -> Result<Value, Refused> {
        let nonce = self.next_nonce();
        let req = RegisterVault::new(&self.policy_id, nonce, &vault.plan, &vault.graph, Some(&vault.funding));
        post(tower, "/v1/vaults", &serde_json::to_vec(&req).unwrap(), &self.owner_auth())
    }

    /// Registers `vault` at a tower and, acknowledged, broadcasts its funding.
    pub fn protect(&mut self, rpc: &BitcoindRpc, tower: &TowerApi, vault: &Vault) {
        self.register(tower, vault).unwrap();
        rpc.broadcast(&vault.funding).unwrap();
    }

    /// The approval of `spend` for `vault`, signed by the co-signer (and the guardian quorum
    /// for guarded vaults).
    pub fn approval(&mut self, vault: &Vault, spend: Txid) -> RegisterApproval {
        let guardians =
            if vault.plan.kind == VaultKind::Guarded { self.example.guardian_threshold as usize } else { 0 };
        self.approval_signed_by(vault, spend, guardians)
    }

    /// The approval of `spend` for `vault`, signed by the co-signer and `guardians` guardians.
    pub fn approval_signed_by(&mut self, vault: &Vault, spend: Txid, guardians: usize) -> RegisterApproval {
        let nonce = self.next_nonce();
        let approval = Approval {
            vault_outpoint: vault.outpoint().to_string(),
            unvault_txid: vault.graph.unvault().compute_txid().to_string(),
            spend_txid: spend.to_string(),
            policy_version: self.policy_version,
            expiry_height: 100_000,
            counter: nonce,
        };
        let mut signatures = vec![wire::sign(&approval.digest(), &auth_keypair(&self.keys.cosigner))];
        for g in 0..guardians {
            signatures.push(wire::sign(&approval.digest(), &auth_keypair(&self.keys.guardians[g])));
        }
        RegisterApproval { nonce, policy_id: self.policy_id.clone(), approval, signatures, duress: false }
    }

    /// Approves `spend` of `vault` at a tower.
    pub fn approve(&mut self, tower: &TowerApi, vault: &Vault, spend: Txid) -> Result<Value, Refused> {
        let req = self.approval(vault, spend);
        post(tower, "/v1/approvals", &serde_json::to_vec(&req).unwrap(), &self.owner_auth())
    }

    /// The owner's spend of U at DELAY, to the wallet.
    pub fn delayed_spend(&self, vault: &Vault) -> Transaction {
        self.delayed_spend_paying(vault, 1_000)
    }

    /// The owner's spend of the unvault after DELAY, paying `fee`.
    pub fn delayed_spend_paying(&self, vault: &Vault, fee: u64) -> Transaction {
        let input = vigil_policy::SpendInput {
            outpoint: vault.unvault_outpoint(),
            txout: vault.unvault_txout(),
            descriptor: vault.descriptors.unvault.clone(),
            sequence: vigil_policy::bitcoin::Sequence::from_height(self.example.delay as u16),
        };
        let value = input.txout.value - Amount::from_sat(fee);
        let out =
            vigil_policy::bitcoin::TxOut { value, script_pubkey: self.wallet.address().script_pubkey() };
        let mut psbt = vigil_policy::spend_psbt(&[input], vec![out]).unwrap();
        let mut signers = vec![Signer::Owner(0), Signer::Cosigner];
        if vault.plan.kind == VaultKind::Guarded {
            signers.extend((0..self.example.guardian_threshold as usize).map(Signer::Guardian));
        }
        self.keys.sign_psbt(&mut psbt, &signers);
        vigil_policy::finalize(psbt).unwrap()
    }
}

/// A signed POST to a tower.
pub fn post(tower: &TowerApi, path: &str, bytes: &[u8], key: &Keypair) -> Result<Value, Refused> {
    let (k, sig) = wire::sign_request(key, &tower.key, path, bytes);
    answer(
        ureq::post(&format!("{}{path}", tower.url))
            .set("x-vigil-key", &k)
            .set("x-vigil-signature", &sig)
            .set("content-type", "application/json")
            .timeout(Duration::from_secs(10))
            .send_bytes(bytes),
    )
}

/// A signed GET from a tower (it signs the current time).
pub fn get(tower: &TowerApi, path: &str, key: &Keypair) -> Result<Value, Refused> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
    let (k, sig) = wire::sign_request(key, &tower.key, path, now.as_bytes());
    answer(
        ureq::get(&format!("{}{path}", tower.url))
            .set("x-vigil-key", &k)
            .set("x-vigil-signature", &sig)
            .set("x-vigil-time", &now)
            .timeout(Duration::from_secs(10))
            .call(),
    )
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> Result<Value, Refused> {
    match result {
        Ok(r) => Ok(r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => Err((code, r.into_string().unwrap_or_default())),
        Err(e) => Err((0, e.to_string())),
    }
}
