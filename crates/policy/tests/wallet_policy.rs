//! Format 2 outputs as BIP-388 wallet policies (ADR 0005): what a hardware signer registers.

use vigil_policy::example::ExamplePolicy;
use vigil_policy::wallet_policy::{MAX_KEYS, MAX_TEMPLATE_LEN, ONE_TIME_KEYS};
use vigil_policy::{CompiledPolicy, Policy, PolicyError, WalletPolicy};

fn compiled(example: ExamplePolicy) -> Result<CompiledPolicy, PolicyError> {
    CompiledPolicy::new(Policy::from_toml(&example.to_toml())?)
}

/// The ranged descriptor a wallet policy stands for: each `@i/<a;b>/*` as `key/a/*` (the
/// first branch, where Vigil's outputs are), a one-time key by its name.
fn expanded(w: &WalletPolicy) -> String {
    let mut text = w.template.clone();
    // Highest index first, so `@1` does not match inside `@12`.
    for (i, key) in w.keys.iter().enumerate().rev() {
        let at = format!("@{i}");
        let once = ONE_TIME_KEYS.contains(&key.as_str());
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(pos) = rest.find(&at) {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + at.len()..];
            let end = after.find([',', ')']).unwrap();
            let derivation = &after[..end];
            let branch = match derivation {
                "/**" => "0".to_owned(),
                d => d.trim_start_matches("/<").split(';').next().unwrap().to_owned(),
            };
            out.push_str(&if once { key.clone() } else { format!("{key}/{branch}/*") });
            rest = &after[end..];
        }
        out.push_str(rest);
        text = out;
    }
    text
}

#[test]
fn every_output_a_signer_signs_for_is_a_wallet_policy_whose_keys_give_its_descriptor() {
    for (owners, guardians) in [(1, 3), (2, 1), (3, 5)] {
        let example =
            ExamplePolicy { format: 2, owners, guardians, guardian_threshold: 1, ..Default::default() };
        let c = compiled(example).unwrap();
        let ranged = c.ranged_descriptors().unwrap();
        let wallets = c.wallet_policies().unwrap();
        let names: Vec<&str> = wallets.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            ["Vigil intake", "Vigil vault", "Vigil guarded vault", "Vigil recovery", "Vigil deep vault"]
        );
        let expected = [
            &ranged.intake,
            &ranged.unvault_standard_template,
            &ranged.unvault_guarded_template,
            &ranged.recovery,
            &ranged.deep_vault,
        ];
        for (w, descriptor) in wallets.iter().zip(expected) {
            assert_eq!(expanded(w), descriptor.split('#').next().unwrap(), "{}", w.name);
            // Keys are numbered in the order the template first uses them; the unspendable
            // internal key (an xpub with no origin: the device shows it as a dummy key) first.
            assert!(w.template.starts_with("tr(@0/"), "{}", w.template);
            assert!(!w.keys[0].starts_with('['), "{:?}", w.keys);
            assert!(w.keys.len() <= MAX_KEYS);
            assert_eq!(
                w.per_vault(),
                w.name.ends_with("vault") && w.name != "Vigil deep vault",
                "{}",
                w.name
            );
        }
    }
}

#[test]
fn the_example_policys_templates_are_what_adr_0005_says() {
    let c = compiled(ExamplePolicy { format: 2, ..Default::default() }).unwrap();
    let wallets = c.wallet_policies().unwrap();
    let templates: Vec<&str> = wallets.iter().map(|w| w.template.as_str()).collect();
    assert_eq!(
        templates,
        [
            // Receive and change on `/**`; the recovery leaf on `/<4;5>/*`.
            "tr(@0/**,{and_v(v:pk(@1/**),pk(@2/**)),and_v(v:pk(@1/<4;5>/*),and_v(v:multi_a(2,@3/<4;5>/*,@4/<4;5>/*,@5/<4;5>/*),older(4320)))})",
            // The one-time keys on `/**`, the first leaf on `/<6;7>/*`, the recovery leaf on `/<8;9>/*`.
            "tr(@0/<6;7>/*,{and_v(v:pk(@1/**),pk(@2/**)),{and_v(v:pk(@3/<6;7>/*),and_v(v:pk(@4/<6;7>/*),older(144))),and_v(v:pk(@3/<8;9>/*),and_v(v:multi_a(2,@5/<8;9>/*,@6/<8;9>/*,@7/<8;9>/*),older(4320)))}})",
            "tr(@0/<6;7>/*,{and_v(v:pk(@1/**),pk(@2/**)),{and_v(v:pk(@3/<6;7>/*),and_v(v:pk(@4/<6;7>/*),and_v(v:multi_a(2,@5/<6;7>/*,@6/<6;7>/*,@7/<6;7>/*),older(144)))),and_v(v:pk(@3/<8;9>/*),and_v(v:multi_a(2,@5/<8;9>/*,@6/<8;9>/*,@7/<8;9>/*),older(4320)))}})",
            "tr(@0/<6;7>/*,{and_v(v:pk(@1/<6;7>/*),and_v(v:pk(@2/<6;7>/*),multi_a(2,@3/<6;7>/*,@4/<6;7>/*,@5/<6;7>/*))),and_v(v:pk(@1/<8;9>/*),and_v(v:multi_a(2,@3/<8;9>/*,@4/<8;9>/*,@5/<8;9>/*),older(4320)))})",
            "tr(@0/<6;7>/*,{and_v(v:pk(@1/<6;7>/*),and_v(v:multi_a(2,@2/<6;7>/*,@3/<6;7>/*,@4/<6;7>/*),older(8640))),and_v(v:pk(@1/<8;9>/*),and_v(v:pk(@5/<6;7>/*),multi_a(3,@2/<8;9>/*,@3/<8;9>/*,@4/<8;9>/*)))})",
        ]
    );
    // The unspendable key is the policy's NUMS xpub, recomputed by anyone from the policy.
    assert_eq!(wallets[0].keys[0], vigil_policy::nums_xpub(c.policy()).to_string());
    assert_eq!(wallets[1].keys[1..3], ["OO", "CO"]);
}

#[test]
fn a_format_1_policy_is_refused_and_the_largest_shape_fits_the_devices_limits() {
    let format_1 = compiled(ExamplePolicy::default()).unwrap();
    let refused = format_1.wallet_policies().unwrap_err().to_string();
    assert!(refused.contains("format = 2"), "{refused}");

    // The largest shape the policy file allows (3 owner keys, 7 guardians) fits the device's
    // key and length limits: 3 + co-signer + 7 + the unspendable key + 2 one-time keys = 14
    // keys. A raised cap that breaks them is refused at compile time by the check this pins.
    let largest =
        compiled(ExamplePolicy { format: 2, owners: 3, guardians: 7, ..Default::default() }).unwrap();
    let sizes: Vec<(usize, usize)> =
        largest.wallet_policies().unwrap().iter().map(|w| (w.keys.len(), w.template.len())).collect();
    assert_eq!(sizes, [(12, 223), (14, 301), (14, 402), (12, 347), (10, 285)]);
    assert!(sizes.iter().all(|(keys, len)| *keys <= MAX_KEYS && *len <= MAX_TEMPLATE_LEN));
}

#[test]
fn an_unknown_format_is_refused_naming_the_field() {
    let text = ExamplePolicy::default().to_toml().replace("version = 1\n", "version = 1\nformat = 3\n");
    match Policy::from_toml(&text) {
        Err(PolicyError::Field { field, reason }) => {
            assert_eq!(field, "format");
            assert!(reason.contains("unknown format 3"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
