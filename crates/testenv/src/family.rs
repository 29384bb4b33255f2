//! A family served by a real co-signer and real towers: enrolled with a token, its policy
//! pinned everywhere, vaults made through the co-signer's ceremony, spends requested,
//! voted on by guardians and signed after DELAY, all over signed HTTP on loopback.

use std::str::FromStr;

use base64::Engine;
use serde_json::Value;
use vigil_client::cosigner::{ClientError, CosignerClient};
use vigil_client::vaulting::{self, VaultOrder, VaultingError};
use vigil_client::Vault;
use vigil_cosigner::wire::{self, Enrolled, PinPolicy, SpendRequest, Vote};
use vigil_policy::bitcoin::consensus::encode::deserialize_hex;
use vigil_policy::bitcoin::hex::DisplayHex;
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::psbt::Psbt;
use vigil_policy::bitcoin::secp256k1::Keypair;
use vigil_policy::bitcoin::{Address, Amount, Sequence, Transaction, TxOut};
use vigil_policy::example::{auth_keypair, ExampleKeys, ExamplePolicy, Signer};
use vigil_policy::{CompiledPolicy, FundingInput, OneTimeKey, Policy, SpendInput, VaultKind};

use vigil_chain::ChainBackend;

use crate::cosigner::{self, CosignerApi, CosignerProcess};
use crate::household::Refused;
use crate::process::{Node, TowerOptions, TowerProcess};
use crate::wallet::{mine, Wallet};

/// A ceremony's failure as a status and a message (0: not an HTTP refusal).
fn refused(e: VaultingError) -> Refused {
    match e {
        VaultingError::Cosigner(ClientError::Refused { status, message, .. }) => (status, message),
        other => (0, other.to_string()),
    }
}

/// The owner, the guardians and their services.
pub struct Family {
    /// The example parameters (with the enrolled co-signer key and the towers' URLs).
    pub example: ExamplePolicy,
    /// The owner's, guardians' and backup keys (the example's co-signer key is unused).
    pub keys: ExampleKeys,
    /// The pinned policy.
    pub compiled: CompiledPolicy,
    /// The policy's text.
    pub policy_text: String,
    /// The co-signer, for this client.
    pub cosigner: CosignerApi,
    /// The towers.
    pub towers: Vec<TowerProcess>,
    /// Coins to fund vaults from.
    pub wallet: Wallet,
    /// The heartbeat tokens: real, duress.
    pub heartbeat: ([u8; 32], [u8; 32]),
    /// The owner's client of the co-signer (its counter numbers every request of the family).
    owner_client: CosignerClient,
    _nonce_dir: tempfile::TempDir,
    next_index: u32,
    next_coin: u32,
}

impl Family {
    /// Enrolls with `co` using a fresh token, writes the policy naming the co-signer's
    /// account and `towers` new towers, and pins it at the co-signer and at every tower.
    pub fn new(
        node: &Node,
        co: &CosignerProcess,
        mut example: ExamplePolicy,
        towers: usize,
        webhook: Option<&str>,
    ) -> Family {
        // The towers' identities are the example's, one per tower.
        example.towers = towers;
        let keys = example.keys();
        let hooks: Vec<&str> = webhook.into_iter().collect();
        let towers: Vec<TowerProcess> = (0..towers)
            .map(|i| {
                // No [[clients]]: the family enrolls through the API.
                let options = TowerOptions {
                    identity: Some(keys.towers[i]),
                    webhooks: &hooks,
                    ..TowerOptions::default()
                };
                TowerProcess::configured(node, &[], i, options)
            })
            .collect();
        let mut family = Family::sharing(node, co, example, &towers.iter().collect::<Vec<_>>());
        family.towers = towers;
        family
    }

    /// A family whose policy names towers that already run (and serve others too): it
    /// enrolls at each. Its `towers` list is empty (they are not its to stop).
    pub fn sharing(
        node: &Node,
        co: &CosignerProcess,
        example: ExamplePolicy,
        towers: &[&TowerProcess],
    ) -> Family {
        Family::sharing_alarmed(node, co, example, towers, &[])
    }

    /// [`Family::sharing`], its alarms also posted to `alarm_webhooks` of its own.
    pub fn sharing_alarmed(
        node: &Node,
        co: &CosignerProcess,
        mut example: ExamplePolicy,
        towers: &[&TowerProcess],
        alarm_webhooks: &[String],
    ) -> Family {
        let token = co.token();
        let enrolled: Enrolled = ureq::post(&format!("{}/v1/enroll", co.url))
            .send_json(serde_json::json!({ "token": token }))
            .unwrap()
            .into_json()
            .unwrap();
        example.towers = towers.len();
        example.services.cosigner_key = Some(enrolled.cosigner_key.clone());
        example.services.cosigner_url = Some(co.url.clone());
        example.services.tower_urls = towers.iter().map(|t| t.api.url.clone()).collect();
        example.services.tower_keys = towers.iter().map(|t| t.public_key.to_string()).collect();
        let text = example.to_toml();
        let keys = example.keys();
        let policy_id = vigil_tower::policy_id(&text);
        let api = CosignerApi {
            url: co.url.clone(),
            client: policy_id,
            key: XOnlyPublicKey::from_str(&enrolled.auth_key).unwrap(),
        };
        let nonce_dir = tempfile::tempdir().unwrap();
        let owner_client =
            CosignerClient::new(&text, auth_keypair(&keys.owners[0]), nonce_dir.path().join("nonce"))
                .unwrap();
        let wallet = Wallet::new();
        if node.rpc.block_hash(1).unwrap().is_none() {
            mine(&node.rpc, 300, &wallet.address());
        }
        let family = Family {
            compiled: CompiledPolicy::new(Policy::from_toml(&text).unwrap()).unwrap(),
            policy_text: text,
            example,
            keys,
            cosigner: api,
            towers: Vec::new(),
            wallet,
            heartbeat: ([1; 32], [2; 32]),
            owner_client,
            _nonce_dir: nonce_dir,
            next_index: 0,
            next_coin: 1,
        };
        let pin = PinPolicy {
            token,
            policy: family.policy_text.clone(),
            heartbeat_real: wire::token_hash(&family.heartbeat.0),
            heartbeat_duress: wire::token_hash(&family.heartbeat.1),
            alarm_emails: vec!["guardians@family.example".into()],
            alarm_webhooks: alarm_webhooks.to_vec(),
        };
        family.post("/v1/clients", &pin, &family.owner()).unwrap();
        for t in towers {
            let req = vigil_tower::wire::EnrollClient {
                nonce: family.next_nonce(),
                token: t.token(),
                policy: family.policy_text.clone(),
                changes: Vec::new(),
            };
            crate::household::post(
                &t.api,
                "/v1/clients",
                &serde_json::to_vec(&req).unwrap(),
                &family.owner(),
            )
            .unwrap();
        }
        // The owner's client unlocks: vault and spend requests need a recent heartbeat.
        assert_eq!(family.heartbeat(false).0, 200);
        family
    }

    /// Funds later vaults from the coinbases from `height` on.
    pub fn use_coins_from(&mut self, height: u32) {
        self.next_coin = height;
    }

    /// The owner's auth key.
    pub fn owner(&self) -> Keypair {
        auth_keypair(&self.keys.owners[0])
    }

    /// Guardian `i`'s auth key.
    pub fn guardian(&self, i: usize) -> Keypair {
        auth_keypair(&self.keys.guardians[i])
    }

    /// The next nonce (one counter for every key of the family: each stays increasing).
    pub fn next_nonce(&self) -> u64 {
        self.owner_client.nonces().next().expect("the nonce file")
    }

    /// A signed POST to the co-signer.
    pub fn post<T: serde::Serialize>(
        &self,
        path: &str,
        request: &T,
        key: &Keypair,
    ) -> Result<Value, Refused> {
        cosigner::post(&self.cosigner, path, request, self.next_nonce(), key)
    }

    /// A signed GET from the co-signer.
    pub fn get(&self, path: &str, key: &Keypair) -> Result<Value, Refused> {
        cosigner::get(&self.cosigner, path, key)
    }

    /// An intake coin of `amount` (plus a fee margin), confirmed.
    pub fn intake_coin(&mut self, node: &Node, amount: Amount) -> FundingInput {
        let index = self.next_index;
        self.next_index += 2;
        let script = self.compiled.intake_descriptor(index).unwrap().script_pubkey();
        let (outpoint, txout) =
            self.wallet.pay(&node.rpc, self.next_coin, script, amount + Amount::from_sat(20_000));
        self.next_coin += 1;
        mine(&node.rpc, 1, &self.wallet.address());
        FundingInput { outpoint, txout, intake_index: index, change: false }
    }

    /// The first half of a ceremony for a vault of `amount` from `coin`: the owner's one-time
    /// key, the co-signer's answer.
    pub fn begin(
        &self,
        coin: &FundingInput,
        amount: Amount,
        kind: VaultKind,
    ) -> Result<(OneTimeKey, wire::VaultBegun), Refused> {
        vaulting::begin(&self.owner_client, &self.order(coin, amount, kind)).map_err(refused)
    }

    /// The owner's half: rebuilds the funding and graph, checks the co-signer's signatures,
    /// signs, and sends it. Returns the co-signer's answer and the vault as the owner holds it.
    pub fn complete(
        &self,
        coin: &FundingInput,
        amount: Amount,
        kind: VaultKind,
        owner_once: OneTimeKey,
        begun: &wire::VaultBegun,
    ) -> Result<(wire::VaultStatus, Vault), Refused> {
        self.complete_signed_by(coin, amount, kind, owner_once, begun, &[Signer::Owner(0)])
    }

    /// [`Self::complete`] with the funding signed by `signers` (none, the wrong ones).
    pub fn complete_signed_by(
        &self,
        coin: &FundingInput,
        amount: Amount,
        kind: VaultKind,
        owner_once: OneTimeKey,
        begun: &wire::VaultBegun,
        signers: &[Signer],
    ) -> Result<(wire::VaultStatus, Vault), Refused> {
        let sign = |psbt: &mut Psbt| self.keys.sign_psbt(psbt, signers);
        vaulting::complete(&self.owner_client, &self.order(coin, amount, kind), owner_once, begun, &sign)
            .map_err(refused)
    }

    fn order<'a>(&'a self, coin: &'a FundingInput, amount: Amount, kind: VaultKind) -> VaultOrder<'a> {
        VaultOrder {
            compiled: &self.compiled,
            earlier: &[],
            coins: std::slice::from_ref(coin),
            index: coin.intake_index,
            change: vigil_policy::ChangeTo { index: coin.intake_index + 1, change_branch: false },
            amount,
            kind,
            funding_sat_per_vb: 2,
        }
    }

    /// A whole ceremony, the funding broadcast and confirmed once the co-signer released it.
    pub fn vault(&mut self, node: &Node, amount: Amount, kind: VaultKind) -> Vault {
        let coin = self.intake_coin(node, amount);
        let (once, begun) = self.begin(&coin, amount, kind).unwrap();
        let (status, vault) = self.complete(&coin, amount, kind, once, &begun).unwrap();
        assert_eq!(status.state, "protected", "{status:?}");
        node.rpc.broadcast(&vault.funding).unwrap();
        mine(&node.rpc, 1, &self.wallet.address());
        vault
    }

    /// The owner's spend of `vault`'s unvault output to `to` after DELAY, as a PSBT signed by
    /// the owner.
    pub fn spend_psbt(&self, vault: &Vault, to: &Address, fee: u64) -> Psbt {
        let input = SpendInput {
            outpoint: vault.unvault_outpoint(),
            txout: vault.unvault_txout(),
            descriptor: vault.descriptors.unvault.clone(),
            sequence: Sequence::from_height(self.example.delay as u16),
        };
        let out =
            TxOut { value: input.txout.value - Amount::from_sat(fee), script_pubkey: to.script_pubkey() };
        let mut psbt = vigil_policy::spend_psbt(&[input], vec![out]).unwrap();
        self.keys.sign_psbt(&mut psbt, &[Signer::Owner(0)]);
        psbt
    }

    /// Asks the co-signer to approve the spend of `vault` in `psbt`.
    pub fn request_spend(&self, vault: &Vault, psbt: &Psbt) -> Result<Value, Refused> {
        let req = SpendRequest {
            vault_outpoint: vault.outpoint().to_string(),
            psbt: base64::engine::general_purpose::STANDARD.encode(psbt.serialize()),
        };
        self.post("/v1/spends", &req, &self.owner())
    }

    /// Guardian `g` approves (or denies) spend request `id`, signing what the co-signer shows.
    pub fn vote(&self, g: usize, id: u64, approve: bool) -> Result<Value, Refused> {
        let key = self.guardian(g);
        let shown: wire::SpendStatus =
            serde_json::from_value(self.get(&format!("/v1/spends/{id}"), &key)?).unwrap();
        let mut psbt =
            Psbt::deserialize(&base64::engine::general_purpose::STANDARD.decode(&shown.psbt).unwrap())
                .unwrap();
        self.keys.sign_psbt(&mut psbt, &[Signer::Guardian(g)]);
        let vote = Vote {
            approve,
            approval_signature: approve.then(|| wire::sign(&shown.approval.digest(), &key).signature),
            psbt: approve.then(|| base64::engine::general_purpose::STANDARD.encode(psbt.serialize())),
        };
        self.post(&format!("/v1/spends/{id}/vote"), &vote, &key)
    }

    /// The co-signer's signature of approved spend `id`: the final transaction.
    pub fn sign(&self, id: u64) -> Result<Transaction, Refused> {
        let v = self.post(&format!("/v1/spends/{id}/sign"), &wire::SignSpend {}, &self.owner())?;
        Ok(deserialize_hex(v["tx"].as_str().unwrap()).unwrap())
    }

    /// Waits until every tower has decided every block up to `node`'s tip (a tower reports the
    /// last block it decided): what it does next is judged at that height, not while catching up.
    pub fn towers_caught_up(&self, node: &Node) {
        let (path, height) =
            (format!("/v1/clients/{}", self.cosigner.client), node.rpc.tip().unwrap().height);
        for t in &self.towers {
            crate::eventually("the tower decides every block", || {
                let view = crate::household::get(&t.api, &path, &self.owner()).ok()?;
                (view["tip"].as_u64()? >= u64::from(height)).then_some(())
            });
        }
    }

    /// Guardian `g` votes to lift the lockdown ending at `until` at `height`.
    pub fn lift(&self, g: usize, height: u32, until: u32) -> Result<Value, Refused> {
        let key = self.guardian(g);
        let digest = vigil_tower::wire::lift_digest(&self.cosigner.client, height, until);
        let req = wire::LiftLockdown {
            lift_at_height: height,
            lockdown_until: until,
            signature: wire::sign(&digest, &key).signature,
        };
        self.post("/v1/lockdown/lift", &req, &key)
    }

    /// A panic signed by `signers` (guardian indexes), handed in by the first.
    pub fn panic(&self, signers: &[usize], id: [u8; 32], not_after_height: u32) -> Result<Value, Refused> {
        let panic = wire::Panic {
            policy_id: self.cosigner.client.clone(),
            id: id.to_lower_hex_string(),
            not_after_height,
        };
        let signatures = signers.iter().map(|g| wire::sign(&panic.digest(), &self.guardian(*g))).collect();
        self.post("/v1/panic", &wire::PanicOrder { panic, signatures }, &self.guardian(signers[0]))
    }

    /// A new version of the policy signed by guardians `signers`, handed in by the first.
    pub fn change_policy(&self, text: &str, signers: &[usize]) -> Result<Value, Refused> {
        let digest = vigil_tower::wire::policy_change_digest(&self.cosigner.client, text);
        let signatures = signers.iter().map(|g| wire::sign(&digest, &self.guardian(*g))).collect();
        let req = wire::PolicyChange { policy: text.to_owned(), signatures };
        self.post("/v1/policy", &req, &self.guardian(signers[0]))
    }

    /// The owner's client unlocking: one sealed heartbeat, real or duress. Raw answer.
    pub fn heartbeat(&self, duress: bool) -> (u16, Vec<u8>) {
        let key = wire::heartbeat_key(&self.owner(), &self.cosigner.key);
        let token = if duress { self.heartbeat.1 } else { self.heartbeat.0 };
        let req = wire::Heartbeat { sealed: wire::seal_heartbeat(&key, &token).to_lower_hex_string() };
        let body = serde_json::to_vec(&wire::Signed {
            nonce: self.next_nonce(),
            time: cosigner::unix_now(),
            request: req,
        })
        .unwrap();
        cosigner::post_raw(&self.cosigner, "/v1/heartbeat", &body, &self.owner())
    }
}
