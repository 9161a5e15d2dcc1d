#![allow(clippy::unwrap_used)]

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

/// A rule that requires a grant, with `extra` lines appended.
fn grant_rule(extra: &str) -> String {
    format!(
        r#"version = 1
[[rules]]
name = "courier full under a grant"
callers = ["spiffe://t.example/courier"]
action = "detokenize"
kinds = ["address"]
purposes = ["shipping"]
reveal = "full"
requires_grant = true
{extra}
"#
    )
}

#[test]
fn a_rule_that_requires_a_grant_allows_nothing_without_one_and_the_denial_says_so() {
    let p = Policy::from_toml(&grant_rule("approvals = 2\napprovers = [\"a\", \"b\"]"))
        .unwrap_or_else(|e| panic!("{e}"));
    let courier = caller("courier");
    let shipping = purpose("shipping");
    let denied = p
        .decide(
            &courier,
            Action::Detokenize,
            FieldKind::Address,
            Some(&shipping),
            None,
        )
        .unwrap_err();
    assert_eq!(denied.on, DeniedOn::Grant);
    assert!(
        denied.to_string().contains("only under an approved grant"),
        "{denied}"
    );
    let denied = p
        .check_call(&courier, Action::Detokenize, Some(&shipping), None)
        .unwrap_err();
    assert_eq!(denied.on, DeniedOn::Grant);
    let rule = "courier full under a grant";
    let ruling = p
        .decide_under_grant(
            &courier,
            Action::Detokenize,
            FieldKind::Address,
            Some(&shipping),
            None,
            rule,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ruling.under_grant);
    assert_eq!(ruling.reveal, Some(RevealLevel::Full));
    assert!(p
        .check_call_under_grant(&courier, Action::Detokenize, Some(&shipping), None, rule)
        .is_ok());
    // A grant of another rule does not open this one.
    let denied = p
        .decide_under_grant(
            &courier,
            Action::Detokenize,
            FieldKind::Address,
            Some(&shipping),
            None,
            "another rule",
        )
        .unwrap_err();
    assert_eq!(denied.on, DeniedOn::Grant);
    // The rule's terms, and who it names.
    let rule = p
        .grant_rule_for(&courier, &[FieldKind::Address], &shipping)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let terms = rule.grant.clone().unwrap_or_else(|| panic!("terms"));
    assert_eq!((terms.approvals, terms.approvers.len()), (2, 2));
    assert!(p.names(&CallerId::parse("a").unwrap_or_else(|e| panic!("{e}"))));
    assert!(p.is_approver(&CallerId::parse("b").unwrap_or_else(|e| panic!("{e}"))));
    let (field, _) = p
        .grant_rule_for(&courier, &[FieldKind::Phone], &shipping)
        .unwrap_err();
    assert_eq!(field, "kinds");
    let (field, _) = p
        .grant_rule_for(&courier, &[FieldKind::Address], &purpose("callback"))
        .unwrap_err();
    assert_eq!(field, "purpose");
}

#[test]
fn grant_terms_that_could_never_be_met_or_do_not_fit_the_rule_are_refused_naming_the_field() {
    for (extra, field, text) in [
        ("approvals = 0", "approvals", "from 1 to 10"),
        ("approvals = 11", "approvals", "from 1 to 10"),
        (
            "approvals = 3\napprovers = [\"a\", \"b\"]",
            "approvals",
            "no grant could become active",
        ),
        ("approvers = []", "approvers", "is empty"),
        ("approvers = [\"a\", \"a\"]", "approvers", "listed twice"),
        (
            "approvers = [\"spiffe://t.example/courier\"]",
            "approvers",
            "never approves its own",
        ),
    ] {
        let e = Policy::from_toml(&grant_rule(extra)).unwrap_err();
        match &e {
            PolicyError::Rule {
                field: f, reason, ..
            } => {
                assert_eq!(*f, field, "{extra}: {e}");
                assert!(reason.contains(text), "{extra}: {e}");
            }
            other => panic!("{extra}: {other}"),
        }
    }
    // Only detokenize rules with a name and a reveal take requires_grant.
    let tokenize = "version = 1\n[[rules]]\nname = \"t\"\ncallers = [\"x\"]\naction = \"tokenize\"\nkinds = [\"phone\"]\nrequires_grant = true\n";
    assert!(Policy::from_toml(tokenize)
        .unwrap_err()
        .to_string()
        .contains("requires_grant"));
    let keys =
        "version = 1\n[[rules]]\ncallers = [\"x\"]\naction = \"keys\"\nrequires_grant = true\n";
    assert!(Policy::from_toml(keys)
        .unwrap_err()
        .to_string()
        .contains("requires_grant"));
    let unnamed = grant_rule("").replace("name = \"courier full under a grant\"\n", "");
    assert!(Policy::from_toml(&unnamed)
        .unwrap_err()
        .to_string()
        .contains("needs a name"));
    let none = grant_rule("").replace("reveal = \"full\"", "reveal = \"none\"");
    assert!(Policy::from_toml(&none)
        .unwrap_err()
        .to_string()
        .contains("reveals none"));
    let loose = "version = 1\n[[rules]]\nname = \"d\"\ncallers = [\"x\"]\naction = \"detokenize\"\nkinds = [\"phone\"]\npurposes = [\"p\"]\nreveal = \"full\"\napprovals = 2\n";
    assert!(Policy::from_toml(loose)
        .unwrap_err()
        .to_string()
        .contains("only a rule with requires_grant = true"));
    // A grants rule is administrative: no kinds.
    let grants =
        "version = 1\n[[rules]]\ncallers = [\"x\"]\naction = \"grants\"\nkinds = [\"phone\"]\n";
    assert!(Policy::from_toml(grants)
        .unwrap_err()
        .to_string()
        .contains("grant administration"));
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
            ("version = 1\n[[rules]]\ncallers=['a']\naction='obliterate'\nkinds=['phone']", "unknown variant"),
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

const ABUSE: &str = r#"
version = 1
deny = ["spiffe://t.example/leaver"]

[freeze]
quota_hits = { count = 2, within = "10m" }
unknown_tokens = { count = 0 }

[[rules]]
name = "support callback"
callers = ["spiffe://t.example/support", "spiffe://t.example/leaver"]
action = "detokenize"
kinds = ["phone"]
purposes = ["callback"]
reveal = "full"
quota = ["60/minute", "2000/day"]
justification = "SUP-[0-9]+"

[[rules]]
name = "support masked without a ticket"
callers = ["spiffe://t.example/support"]
action = "detokenize"
kinds = ["phone", "address"]
purposes = ["callback"]
reveal = "masked"

[[rules]]
name = "billing needs a ticket"
callers = ["spiffe://t.example/billing"]
action = "detokenize"
kinds = ["address"]
purposes = ["invoice"]
reveal = "full"
justification = "INV-[0-9]{4}"

[[rules]]
name = "operators"
callers = ["ops-admin"]
action = "admin"
"#;

fn abuse() -> Policy {
    Policy::from_toml(ABUSE).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn quotas_justification_deny_list_and_freeze_rules_are_read() {
    let p = abuse();
    let rule = &p.rules()[0];
    assert_eq!(rule.line, 9);
    assert_eq!(
        rule.quotas
            .iter()
            .map(|q| q.to_string())
            .collect::<Vec<_>>(),
        ["60/minute", "2000/day"]
    );
    assert_eq!(
        rule.justification.as_ref().map(|j| j.as_str()),
        Some("SUP-[0-9]+")
    );
    assert_eq!(p.deny_list(), ["spiffe://t.example/leaver"]);
    let f = p.freeze_rules();
    assert_eq!((f.quota_hits.count, f.quota_hits.window_ms), (2, 600_000));
    assert!(f.unknown_tokens.is_off());
    // Defaults without a [freeze] table.
    assert_eq!(policy().freeze_rules(), FreezeRules::default());
}

#[test]
fn a_justification_pattern_must_match_the_whole_justification() {
    let p = abuse();
    let cb = purpose("callback");
    let reveal = |j: Option<&str>| {
        p.decide(
            &caller("support"),
            Action::Detokenize,
            FieldKind::Phone,
            Some(&cb),
            j,
        )
        .map(|g| (g.reveal, g.rule))
    };
    // A ticket: the full rule, with its quota.
    assert_eq!(
        reveal(Some("SUP-123")),
        Ok((Some(RevealLevel::Full), "support callback".to_owned()))
    );
    // No ticket, or a malformed one, or one inside other text: the rule
    // without a pattern (masked) decides.
    for j in [None, Some("SUP-"), Some("see SUP-123"), Some("SUP-123 ")] {
        assert_eq!(
            reveal(j),
            Ok((
                Some(RevealLevel::Masked),
                "support masked without a ticket".to_owned()
            )),
            "{j:?}"
        );
    }
    // Where the only rule needs a ticket, the call is refused and says so
    // (naming the pattern, never what was given).
    let inv = purpose("invoice");
    let billing = caller("billing");
    let missing = p
        .check_call(&billing, Action::Detokenize, Some(&inv), None)
        .err();
    assert_eq!(
        missing.as_ref().map(|d| d.on),
        Some(DeniedOn::Justification)
    );
    let msg = missing.map(|d| d.to_string()).unwrap_or_default();
    assert!(
        msg.contains("'INV-[0-9]{4}'") && msg.contains("none was given"),
        "{msg}"
    );
    let malformed = p
        .check_call(
            &billing,
            Action::Detokenize,
            Some(&inv),
            Some("INV-12 secret"),
        )
        .err()
        .map(|d| d.to_string())
        .unwrap_or_default();
    assert!(malformed.contains("does not match"), "{malformed}");
    assert!(!malformed.contains("secret"), "{malformed}");
    assert!(p
        .check_call(&billing, Action::Detokenize, Some(&inv), Some("INV-1234"))
        .is_ok());
    assert_eq!(
        p.decide(
            &billing,
            Action::Detokenize,
            FieldKind::Address,
            Some(&inv),
            Some("INV-99")
        )
        .map_err(|d| d.on),
        Err(DeniedOn::Justification)
    );
}

#[test]
fn a_deny_listed_caller_is_refused_before_any_rule() {
    let p = abuse();
    let leaver = caller("leaver");
    let cb = purpose("callback");
    assert!(!p.names(&leaver));
    for action in Action::ALL {
        assert_eq!(
            p.check_call(&leaver, action, Some(&cb), Some("SUP-1"))
                .map_err(|d| d.on),
            Err(DeniedOn::DenyList),
            "{action}"
        );
    }
    assert_eq!(
        p.decide(
            &leaver,
            Action::Detokenize,
            FieldKind::Phone,
            Some(&cb),
            Some("SUP-1")
        )
        .map_err(|d| d.to_string()),
        Err("caller 'spiffe://t.example/leaver' is on the policy's deny list".to_owned())
    );
}

#[test]
fn only_callers_an_admin_rule_names_may_administer_callers() {
    let p = abuse();
    let ops = CallerId::common_name("ops-admin").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.check_call(&ops, Action::Admin, None, None), Ok(()));
    assert_eq!(
        p.check_call(&caller("support"), Action::Admin, None, None)
            .map_err(|d| d.on),
        Err(DeniedOn::Action)
    );
    // And an admin rule reveals nothing.
    for kind in FieldKind::ALL {
        assert!(p
            .decide(
                &ops,
                Action::Detokenize,
                kind,
                Some(&purpose("callback")),
                None
            )
            .is_err());
    }
}

#[test]
fn bad_quotas_patterns_and_settings_are_refused_naming_line_and_field() {
    let rule = |extra: &str| {
        format!(
            "version = 1\n\n[[rules]]\nname = 'r'\ncallers = ['a']\naction = 'detokenize'\nkinds = \
             ['phone']\npurposes = ['x']\nreveal = 'full'\n{extra}\n"
        )
    };
    let cases = [
        (rule("quota = ['100/week']"), "line 10: rules[0].quota: '100/week': unknown unit"),
        (rule("quota = '0/minute'"), "rules[0].quota: '0/minute': the limit must be"),
        (rule("quota = ['1/minute', '2/minute']"), "rules[0].quota: two limits per minute"),
        (rule("quota = []"), "rules[0].quota: is empty"),
        (
            rule("quota = '5/day'") + "[[rules]]\nname = 'r'\ncallers = ['b']\naction = 'keys'\n",
            "line 11: rules[1].name: 'r' is also the name of the rule at line 3",
        ),
        (
            rule("quota = '5/day'").replace("name = 'r'\n", ""),
            "rules[0].name: a rule with a quota needs a name",
        ),
        (
            rule("quota = '5/day'").replace("'full'", "'none'"),
            "rules[0].quota: a quota counts values revealed",
        ),
        (rule("justification = 'SUP-[0-9'"), "line 10: rules[0].justification: 'SUP-[0-9' does not compile: unclosed character class"),
        (rule("justification = ''"), "rules[0].justification: must not be empty"),
        (
            rule("justification = 'SUP-[0-9]+)|(?:.*'"),
            "rules[0].justification: 'SUP-[0-9]+)|(?:.*' does not compile",
        ),
        (
            rule("").replace("name = 'r'", "name = 'r\u{202e}x'"),
            "rules[0].name: must be 1 to 200 bytes",
        ),
        (
            "version = 1\n[[rules]]\ncallers = ['a']\naction = 'tokenize'\nkinds = ['phone']\nquota = ['1/minute']".into(),
            "line 6: rules[0].quota: only detokenize rules take quota",
        ),
        (
            "version = 1\n[[rules]]\ncallers = ['a']\naction = 'admin'\nkinds = ['phone']".into(),
            "rules[0].kinds: an admin rule allows the Admin service",
        ),
        (
            "version = 1\n[[rules]]\ncallers = ['a']\naction = 'obliterate'".into(),
            "line 4",
        ),
        (
            "version = 1\n[[rules]]\ncallers = ['a']\naction = 'tokenize'\nkinds = ['fax']".into(),
            "line 5: rules[0].kinds: 'fax'",
        ),
        ("version = 1\ndeny = ['bad id ']".into(), "line 2: deny: 'bad id '"),
        (
            "version = 1\n[freeze]\nquota_hits = { count = 3 }".into(),
            "line 3: freeze.quota_hits: must say 'within'",
        ),
        (
            "version = 1\n[freeze]\nquota_hits = { count = 3, within = '10 fortnights' }".into(),
            "freeze.quota_hits: within = '10 fortnights'",
        ),
        (
            "version = 1\n[freeze]\nunknown_tokens = { count = 3, within = '30d' }".into(),
            "from 1s to 7d",
        ),
        ("version = 1\n[freeze]\nscans = 3".into(), "unknown field"),
    ];
    for (text, expected) in cases {
        let err = Policy::from_toml(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
}

const LIFECYCLE: &str = r#"
version = 1

[[rules]]
name = "orders delete"
callers = ["spiffe://t.example/orders"]
action = "delete"
kinds = ["phone", "address"]

[[rules]]
name = "orders inspect"
callers = ["spiffe://t.example/orders"]
action = "inspect"
kinds = ["phone"]

[[rules]]
name = "privacy erase"
callers = ["spiffe://t.example/privacy"]
action = "erase"
kinds = ["phone"]

[[rules]]
name = "privacy export"
callers = ["spiffe://t.example/privacy"]
action = "export"
kinds = ["phone"]
purposes = ["dsar"]

[[rules]]
name = "ops backup"
callers = ["spiffe://t.example/ops"]
action = "backup"
"#;

#[test]
fn data_lifecycle_actions_are_decided_per_kind_and_export_per_purpose() {
    let p = Policy::from_toml(LIFECYCLE).unwrap_or_else(|e| panic!("{e}"));
    let orders = caller("orders");
    let privacy = caller("privacy");
    let on = |c: &CallerId, action, kind, purpose: Option<&str>| {
        let purpose = purpose.map(self::purpose);
        p.decide(c, action, kind, purpose.as_ref(), None)
            .map(|g| g.rule)
            .map_err(|d| d.on)
    };
    assert_eq!(
        on(&orders, Action::Delete, FieldKind::Address, None),
        Ok("orders delete".to_owned())
    );
    assert_eq!(
        on(&orders, Action::Inspect, FieldKind::Address, None),
        Err(DeniedOn::Kind)
    );
    assert_eq!(
        on(&orders, Action::Erase, FieldKind::Phone, None),
        Err(DeniedOn::Action)
    );
    assert_eq!(
        on(&privacy, Action::Erase, FieldKind::Phone, None),
        Ok("privacy erase".to_owned())
    );
    assert_eq!(
        on(&privacy, Action::Export, FieldKind::Phone, Some("dsar")),
        Ok("privacy export".to_owned())
    );
    assert_eq!(
        on(&privacy, Action::Export, FieldKind::Phone, None),
        Err(DeniedOn::Purpose)
    );
    assert_eq!(
        on(
            &privacy,
            Action::Export,
            FieldKind::Phone,
            Some("marketing")
        ),
        Err(DeniedOn::Purpose)
    );
    assert_eq!(
        p.check_call(&caller("ops"), Action::Backup, None, None),
        Ok(())
    );
    assert_eq!(
        p.check_call(&orders, Action::Backup, None, None)
            .map_err(|d| d.on),
        Err(DeniedOn::Action)
    );
}

#[test]
fn lifecycle_rules_refuse_fields_that_mean_something_else() {
    let with = |extra: &str| {
        Policy::from_toml(&format!(
            "version = 1\n[[rules]]\nname = \"r\"\ncallers = [\"spiffe://t.example/a\"]\n{extra}\n"
        ))
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let export = with("action = \"export\"\nkinds = [\"phone\"]");
    assert!(
        export
            .as_ref()
            .is_err_and(|e| e.contains("rules[0].purposes") && e.contains("export rule")),
        "{export:?}"
    );
    let delete = with("action = \"delete\"\nkinds = [\"phone\"]\nreveal = \"full\"");
    assert!(
        delete
            .as_ref()
            .is_err_and(|e| e.contains("rules[0].reveal")),
        "{delete:?}"
    );
    let backup = with("action = \"backup\"\nkinds = [\"phone\"]");
    assert!(
        backup.as_ref().is_err_and(
            |e| e.contains("rules[0].kinds") && e.contains("backups of the whole store")
        ),
        "{backup:?}"
    );
    let erase = with("action = \"erase\"\nkinds = [\"phone\"]\npurposes = [\"dsar\"]");
    assert!(
        erase
            .as_ref()
            .is_err_and(|e| e.contains("rules[0].purposes") && e.contains("takes no purposes")),
        "{erase:?}"
    );
    assert_eq!(with("action = \"erase\"\nkinds = [\"email\"]"), Ok(()));
}
