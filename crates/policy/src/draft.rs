//! Writing a household's policy file from its parts: the owner's keys, the services it enrolled
//! with, the guardians' keys, and the limits it chose. What `vigil init` pins everywhere.

use crate::{Policy, PolicyError};

/// A tower as the policy names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftTower {
    /// Its name in the policy.
    pub name: String,
    /// Its API's URL.
    pub url: String,
    /// Its identity key (compressed public key, hex).
    pub key: String,
}

/// Everything a policy file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDraft {
    /// `regtest`, `signet`, `testnet4`, `bitcoin`.
    pub network: String,
    /// The policy format: 2 when the owner's key is on a hardware signer (ADR 0005).
    pub format: u32,
    /// The owner's vault key, `[fp/path]xpub`.
    pub owner_key: String,
    /// The owner's request-signing key (x-only hex).
    pub owner_auth_key: String,
    /// The off-site backup key.
    pub backup_key: String,
    /// The co-signer's account key for this household.
    pub cosigner_key: String,
    /// The co-signer's URL.
    pub cosigner_url: String,
    /// The guardians' keys.
    pub guardian_keys: Vec<String>,
    /// How many guardians must sign.
    pub guardian_threshold: u32,
    /// DELAY, T_RECOVER, LONG, in blocks.
    pub delays: [u32; 3],
    /// The unvault's feerate, sat/vB.
    pub unvault_sat_per_vb: u64,
    /// The cancel ladder, sat/vB.
    pub ladder_sat_per_vb: Vec<u64>,
    /// Rung cap, percent of the vault.
    pub max_fee_percent: u64,
    /// The allowance wallet's ceiling, sat.
    pub hot_limit_sat: u64,
    /// The most unvaults release per window, sat.
    pub velocity_limit_sat: u64,
    /// The velocity window, blocks.
    pub velocity_window_blocks: u32,
    /// The towers.
    pub towers: Vec<DraftTower>,
}

/// `text` as a TOML string, escaped: a value from a service cannot add keys or sections.
fn q(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn quoted(items: &[String]) -> String {
    items.iter().map(|k| format!("  {},", q(k))).collect::<Vec<_>>().join("\n")
}

impl PolicyDraft {
    /// The policy file, checked: it parses and validates, or the field at fault is named.
    /// Every value is written escaped, so what a service answered (the co-signer's key, say)
    /// cannot add a tower or change a limit.
    pub fn to_toml(&self) -> Result<String, PolicyError> {
        let [delay, recovery, deep] = self.delays;
        let ladder = self.ladder_sat_per_vb.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let towers: String = self
            .towers
            .iter()
            .map(|t| {
                format!("\n[[towers]]\nname = {}\nurl = {}\nkey = {}\n", q(&t.name), q(&t.url), q(&t.key))
            })
            .collect();
        let text = format!(
            r#"# Vigil custody policy, written by `vigil init`. It names public keys only; every
# service pins it by its sha256, so changing it takes the guardians' signatures.
version = 1
{format}network = {network}

[owner]
threshold = 1
keys = [
  {owner},
]
# The key the owner's client signs requests with (not derived from the vault key).
auth_keys = [
  {owner_auth},
]
# The off-site backup key: only the deep vault uses it.
backup = {backup}

[cosigner]
key = {cosigner}
url = {cosigner_url}

[guardians]
threshold = {guardian_threshold}
keys = [
{guardians}
]

[delays]
# DELAY: blocks between an unvault's confirmation and its spend (the towers' window).
unvault = {delay}
# T_RECOVER: owner + guardians may act without the co-signer after this many blocks.
recovery = {recovery}
# LONG: the deep vault's slow path.
deep_vault = {deep}

[fees]
unvault_sat_per_vb = {unvault_rate}
ladder_sat_per_vb = [{ladder}]
max_fee_percent = {max_fee}

[allowance]
hot_limit_sat = {hot}
velocity_limit_sat = {velocity}
velocity_window_blocks = {window}
whitelist = []
{towers}"#,
            network = q(&self.network),
            format = match self.format {
                1 => String::new(),
                n => format!(
                    "# Keys derive per leaf, so a hardware signer can register each output.\nformat = {n}\n"
                ),
            },
            owner = q(&self.owner_key),
            owner_auth = q(&self.owner_auth_key),
            backup = q(&self.backup_key),
            cosigner = q(&self.cosigner_key),
            cosigner_url = q(&self.cosigner_url),
            guardian_threshold = self.guardian_threshold,
            guardians = quoted(&self.guardian_keys),
            unvault_rate = self.unvault_sat_per_vb,
            max_fee = self.max_fee_percent,
            hot = self.hot_limit_sat,
            velocity = self.velocity_limit_sat,
            window = self.velocity_window_blocks,
        );
        let policy = Policy::from_toml(&text)?;
        debug_assert_eq!(policy.towers.len(), self.towers.len());
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::{account_key, ExamplePolicy};

    fn draft() -> PolicyDraft {
        let keys = ExamplePolicy::default().keys();
        let example = Policy::from_toml(&ExamplePolicy::default().to_toml()).unwrap();
        PolicyDraft {
            network: "regtest".into(),
            format: 1,
            owner_key: account_key(&keys.owners[0]),
            owner_auth_key: "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798".into(),
            backup_key: account_key(&keys.backup),
            cosigner_key: account_key(&keys.cosigner),
            cosigner_url: "http://127.0.0.1:7420".into(),
            guardian_keys: keys.guardians.iter().map(account_key).collect(),
            guardian_threshold: 2,
            delays: [144, 4320, 8640],
            unvault_sat_per_vb: 2,
            ladder_sat_per_vb: vec![1, 2, 5],
            max_fee_percent: 5,
            hot_limit_sat: 1_000_000,
            velocity_limit_sat: 10_000_000,
            velocity_window_blocks: 1008,
            towers: vec![DraftTower {
                name: "a".into(),
                url: "http://127.0.0.1:7431".into(),
                key: example.towers[0].key.to_string(),
            }],
        }
    }

    #[test]
    fn a_draft_is_a_valid_policy_and_a_hostile_value_cannot_add_a_tower() {
        let good = draft();
        let policy = Policy::from_toml(&good.to_toml().unwrap()).unwrap();
        assert_eq!(policy.towers.len(), 1);
        let mut hostile = good.clone();
        hostile.cosigner_url = "x\"\n[[towers]]\nname = \"evil\"\nurl = \"http://evil\"\nkey = \"k".into();
        // Escaped: the URL is just a (strange) string, and there is still one tower.
        let text = hostile.to_toml().unwrap();
        assert_eq!(Policy::from_toml(&text).unwrap().towers.len(), 1);
    }
}
