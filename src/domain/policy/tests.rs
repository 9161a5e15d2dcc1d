use super::*;

const SAMPLE: &str = r#"
version = 1

[[rules]]
name = "orders tokenize"
callers = ["spiffe://t.example/orders"]
action = "tokenize"
kinds = ["phone", "address", "national_id"]

[[rules]]
name = "support phone"
callers = ["spiffe://t.example/support"]
action = "detokenize"
kinds = ["phone"]
purposes = ["callback"]
reveal = "full"

[[rules]]
name = "support address"
callers = ["spiffe://t.example/support"]
action = "detokenize"
kinds = ["address", "phone"]
purposes = ["callback"]
reveal = "masked"
"#;

fn caller(name: &str) -> CallerId {
    CallerId::spiffe(&format!("spiffe://t.example/{name}")).unwrap_or_else(|e| panic!("{e}"))
}

fn purpose(p: &str) -> Purpose {
    Purpose::parse(p).unwrap_or_else(|e| panic!("{e}"))
}

fn policy() -> Policy {
    Policy::from_toml(SAMPLE).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_most_revealing_matching_rule_wins() {
    let p = policy();
    let cb = purpose("callback");
    let g = p.decide(
        &caller("support"),
        Action::Detokenize,
        FieldKind::Phone,
        Some(&cb),
        None,
    );
    assert_eq!(g.map(|g| g.reveal), Ok(Some(RevealLevel::Full)));
    let g = p.decide(
        &caller("support"),
        Action::Detokenize,
        FieldKind::Address,
        Some(&cb),
        None,
    );
    assert_eq!(g.map(|g| g.reveal), Ok(Some(RevealLevel::Masked)));
}

#[test]
fn denials_name_the_dimension_that_failed() {
    let p = policy();
    let cb = purpose("callback");
    let deny = |c: &str, a, k, pu: Option<&Purpose>| {
        p.decide(&caller(c), a, k, pu, None).err().map(|d| d.on)
    };
    assert_eq!(
        deny("intruder", Action::Tokenize, FieldKind::Phone, None),
        Some(DeniedOn::Caller)
    );
    assert_eq!(
        deny("orders", Action::Detokenize, FieldKind::Phone, Some(&cb)),
        Some(DeniedOn::Action)
    );
    assert_eq!(
        deny(
            "support",
            Action::Detokenize,
            FieldKind::NationalId,
            Some(&cb)
        ),
        Some(DeniedOn::Kind)
    );
    let mk = purpose("marketing");
    assert_eq!(
        deny("support", Action::Detokenize, FieldKind::Phone, Some(&mk)),
        Some(DeniedOn::Purpose)
    );
    assert_eq!(
        deny("support", Action::Detokenize, FieldKind::Phone, None),
        Some(DeniedOn::Purpose)
    );
    assert_eq!(
        deny("orders", Action::Tokenize, FieldKind::Phone, None),
        None
    );

    let d = p.check_call(&caller("support"), Action::Detokenize, Some(&mk), None);
    let msg = d.err().map(|d| d.to_string()).unwrap_or_default();
    assert!(msg.contains("purpose 'marketing'"), "{msg}");
}

#[test]
fn an_empty_policy_denies_everything() {
    let p = Policy::from_toml("version = 1").unwrap_or_else(|e| panic!("{e}"));
    assert!(p
        .check_call(&caller("orders"), Action::Tokenize, None, None)
        .is_err());
}

#[test]
fn invalid_policies_name_the_rule_and_field() {
    let cases = [
            ("version = 2", "version 2"),
            ("version = 1\n[[rules]]\ncallers=[]\naction='tokenize'\nkinds=['phone']", "rules[0].callers"),
            ("version = 1\n[[rules]]\ncallers=['a']\naction='tokenize'\nkinds=['fax']", "rules[0].kinds"),
            (
                "version = 1\n[[rules]]\ncallers=['a']\naction='detokenize'\nkinds=['phone']\nreveal='full'",
                "rules[0].purposes",
            ),
            (
                "version = 1\n[[rules]]\ncallers=['a']\naction='detokenize'\nkinds=['phone']\npurposes=['x']",
                "rules[0].reveal",
            ),
            ("version = 1\n[[rules]]\ncallers=['a']\naction='tokenize'\nkinds=['phone']\nreveal='full'", "rules[0].reveal"),
            ("version = 1\n[[rules]]\ncallers=['a']\naction='delete'\nkinds=['phone']", "unknown variant"),
            // Only keys rules go without kinds.
            ("version = 1\n[[rules]]\ncallers=['a']\naction='tokenize'", "rules[0].kinds: must name"),
            (
                "version = 1\n[[rules]]\ncallers=['a']\naction='detokenize'\npurposes=['x']\nreveal='full'",
                "rules[0].kinds: must name",
            ),
            ("version = 1\nrule = 3", "unknown field"),
        ];
    for (text, expected) in cases {
        let err = Policy::from_toml(text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
}

const WITH_KEYS: &str = r#"
version = 1

[[rules]]
name = "orders tokenize"
callers = ["spiffe://t.example/orders"]
action = "tokenize"
kinds = ["phone"]

[[rules]]
name = "support phone"
callers = ["spiffe://t.example/support"]
action = "detokenize"
kinds = ["phone"]
purposes = ["callback"]
reveal = "full"

[[rules]]
name = "rotation job"
callers = ["spiffe://t.example/rotator", "key-admin-cn"]
action = "keys"
"#;

#[test]
fn only_callers_a_keys_rule_names_may_administer_keys() {
    let p = Policy::from_toml(WITH_KEYS).unwrap_or_else(|e| panic!("{e}"));
    let keys = |c: &CallerId| p.check_call(c, Action::Keys, None, None).map_err(|d| d.on);
    assert_eq!(keys(&caller("rotator")), Ok(()));
    let cn = CallerId::common_name("key-admin-cn").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(keys(&cn), Ok(()));
    assert_eq!(keys(&caller("orders")), Err(DeniedOn::Action));
    assert_eq!(keys(&caller("support")), Err(DeniedOn::Action));
    assert_eq!(keys(&caller("intruder")), Err(DeniedOn::Caller));
    let msg = p
        .check_call(&caller("support"), Action::Keys, None, None)
        .err()
        .map(|d| d.to_string())
        .unwrap_or_default();
    assert_eq!(
        msg,
        "caller 'spiffe://t.example/support' has no rule allowing keys"
    );
    // The rule is parsed as a keys rule with nothing else to it.
    let rule = &p.rules()[2];
    assert_eq!(rule.action, Action::Keys);
    assert_eq!(rule.name, "rotation job");
    assert!(rule.kinds.is_empty() && rule.purposes.is_empty() && rule.reveal.is_none());
}

#[test]
fn a_keys_rule_grants_no_data_rights() {
    let p = Policy::from_toml(WITH_KEYS).unwrap_or_else(|e| panic!("{e}"));
    let rotator = caller("rotator");
    let cb = purpose("callback");
    assert_eq!(
        p.check_call(&rotator, Action::Tokenize, None, None)
            .map_err(|d| d.on),
        Err(DeniedOn::Action)
    );
    assert_eq!(
        p.check_call(&rotator, Action::Detokenize, Some(&cb), None)
            .map_err(|d| d.on),
        Err(DeniedOn::Action)
    );
    for kind in FieldKind::ALL {
        for action in [Action::Tokenize, Action::Detokenize] {
            assert!(p.decide(&rotator, action, kind, Some(&cb), None).is_err());
        }
        // Nor does asking with the keys action itself reach any kind.
        assert_eq!(
            p.decide(&rotator, Action::Keys, kind, None, None)
                .map_err(|d| d.on),
            Err(DeniedOn::Kind)
        );
    }
}

#[test]
fn a_keys_rule_with_kinds_purposes_or_reveal_is_refused_naming_the_field() {
    let head = "version = 1\n[[rules]]\ncallers=['a']\naction='keys'\n";
    let cases = [
        ("kinds=['phone']", "rules[0].kinds: a keys rule"),
        ("kinds=[]", "rules[0].kinds: a keys rule"),
        ("purposes=['rotation']", "rules[0].purposes: a keys rule"),
        ("purposes=[]", "rules[0].purposes: a keys rule"),
        ("reveal='none'", "rules[0].reveal: a keys rule"),
    ];
    for (line, expected) in cases {
        let text = format!("{head}{line}");
        let err = Policy::from_toml(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
    // Its callers are checked like any rule's.
    let err = Policy::from_toml("version = 1\n[[rules]]\ncallers=[]\naction='keys'")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("rules[0].callers"), "{err}");
    assert!(Policy::from_toml(head).is_ok());
}
