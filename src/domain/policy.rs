//! Who may do what with which field kinds, for which purposes.
//!
//! A policy is a list of allow rules; anything no rule allows is denied
//! (default deny). A denial says which dimension failed — caller, action,
//! kind or purpose — so an operator can fix the policy, and never mentions a
//! value.
//!
//! File format (TOML):
//! ```toml
//! version = 1
//!
//! [[rules]]
//! name = "support: phone in full for callbacks"
//! callers = ["spiffe://fieldvault.dev/support"]
//! action = "detokenize"            # "tokenize", "detokenize" or "keys"
//! kinds = ["phone"]                # phone, email, address, national_id
//! purposes = ["callback"]          # required for detokenize rules
//! reveal = "full"                  # detokenize only: "full", "masked" or "none"
//!
//! [[rules]]
//! name = "the rotation job administers keys"
//! callers = ["spiffe://fieldvault.dev/rotator"]
//! action = "keys"                  # the KeyAdmin service: no kinds, purposes or reveal
//! ```
//! When several rules allow the same detokenize, the most revealing wins.
//! A `keys` rule allows every KeyAdmin call (rotate, rewrap, retire, status)
//! and no data: it reveals nothing and tokenizes nothing.

use super::{CallerId, FieldKind, Purpose};
use serde::Deserialize;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Tokenize,
    Detokenize,
    /// Key administration (the KeyAdmin service).
    Keys,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Tokenize => "tokenize",
            Action::Detokenize => "detokenize",
            Action::Keys => "keys",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of a value a reveal shows. Ordered: `None < Masked < Full`.
/// `None` reveals only metadata (the kind, a national ID's scheme).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevealLevel {
    None,
    Masked,
    Full,
}

impl RevealLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            RevealLevel::None => "none",
            RevealLevel::Masked => "masked",
            RevealLevel::Full => "full",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub callers: Vec<String>,
    pub action: Action,
    /// Empty for a keys rule (it allows no data).
    pub kinds: Vec<FieldKind>,
    /// Empty for a tokenize rule means "any purpose, or none".
    pub purposes: Vec<Purpose>,
    /// Set for detokenize rules, never for tokenize rules.
    pub reveal: Option<RevealLevel>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// The dimension of a request that no rule matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeniedOn {
    Caller,
    Action,
    Kind,
    Purpose,
}

/// Why a request was denied. Its message names the caller, the action, the
/// kind and the purpose — all non-sensitive — and the failed dimension.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    pub on: DeniedOn,
    message: String,
}

/// What a matching rule allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `Some` for detokenize, `None` for tokenize.
    pub reveal: Option<RevealLevel>,
    /// The name of the rule that granted it (for the audit log).
    pub rule: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy is not valid TOML or has an unknown field: {0}")]
    Syntax(String),
    #[error("policy: unsupported version {0} (this build reads version 1)")]
    Version(u32),
    #[error("policy: rules[{index}].{field}: {reason}")]
    Rule {
        index: usize,
        field: &'static str,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: u32,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    callers: Vec<String>,
    action: Action,
    /// Required for tokenize and detokenize rules; refused for keys rules.
    kinds: Option<Vec<String>>,
    /// `None` when absent, so that a keys rule with `purposes = []` is
    /// refused too.
    purposes: Option<Vec<String>>,
    reveal: Option<RevealLevel>,
}

impl Policy {
    /// Parses and validates a policy file. Errors name the rule and field.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        if raw.version != 1 {
            return Err(PolicyError::Version(raw.version));
        }
        let rules = raw
            .rules
            .into_iter()
            .enumerate()
            .map(|(index, r)| Self::rule(index, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules })
    }

    fn rule(index: usize, r: RawRule) -> Result<Rule, PolicyError> {
        let bad = |field: &'static str, reason: String| PolicyError::Rule {
            index,
            field,
            reason,
        };
        if r.callers.is_empty() {
            return Err(bad("callers", "must name at least one caller".into()));
        }
        for c in &r.callers {
            let ok = if c.starts_with("spiffe://") {
                CallerId::spiffe(c).is_ok()
            } else {
                CallerId::common_name(c).is_ok()
            };
            if !ok {
                return Err(bad(
                    "callers",
                    format!("'{c}' is neither a SPIFFE ID nor a common name"),
                ));
            }
        }
        if r.action == Action::Keys {
            // Key administration concerns no field kind, purpose or reveal:
            // a rule that names one was meant as something else.
            let refuse = |field: &'static str| {
                bad(
                    field,
                    "a keys rule allows key administration only and takes no kinds, purposes \
                     or reveal"
                        .into(),
                )
            };
            if r.kinds.is_some() {
                return Err(refuse("kinds"));
            }
            if r.purposes.is_some() {
                return Err(refuse("purposes"));
            }
            if r.reveal.is_some() {
                return Err(refuse("reveal"));
            }
            return Ok(Rule {
                name: r.name.unwrap_or_else(|| format!("rules[{index}]")),
                callers: r.callers,
                action: r.action,
                kinds: Vec::new(),
                purposes: Vec::new(),
                reveal: None,
            });
        }
        let kinds = r.kinds.unwrap_or_default();
        if kinds.is_empty() {
            return Err(bad("kinds", "must name at least one field kind".into()));
        }
        let kinds = kinds
            .iter()
            .map(|k| k.parse::<FieldKind>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("kinds", format!("'{}': {e}", e.0)))?;
        let purposes = r
            .purposes
            .unwrap_or_default()
            .iter()
            .map(|p| Purpose::parse(p).map_err(|e| bad("purposes", format!("'{p}' {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        match r.action {
            Action::Detokenize => {
                if purposes.is_empty() {
                    return Err(bad(
                        "purposes",
                        "a detokenize rule must list its purposes".into(),
                    ));
                }
                if r.reveal.is_none() {
                    return Err(bad(
                        "reveal",
                        "a detokenize rule must say 'full', 'masked' or 'none'".into(),
                    ));
                }
            }
            Action::Tokenize => {
                if r.reveal.is_some() {
                    return Err(bad("reveal", "only detokenize rules reveal".into()));
                }
            }
            // Handled above.
            Action::Keys => {}
        }
        Ok(Rule {
            name: r.name.unwrap_or_else(|| format!("rules[{index}]")),
            callers: r.callers,
            action: r.action,
            kinds,
            purposes,
            reveal: r.reveal,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether any rule names `caller` (for any action): a caller no rule
    /// names is refused every call.
    pub fn names(&self, caller: &CallerId) -> bool {
        self.rules
            .iter()
            .any(|r| r.callers.iter().any(|c| c == caller.as_str()))
    }

    /// Whether `caller` may perform `action` with `purpose` at all, before
    /// the field kinds are known. `Ok` means at least one rule could allow
    /// some kind; each item is then checked with [`Policy::decide`].
    /// For [`Action::Keys`] (with no purpose) this is the whole decision:
    /// `Ok` exactly for the callers a keys rule names.
    pub fn check_call(
        &self,
        caller: &CallerId,
        action: Action,
        purpose: Option<&Purpose>,
    ) -> Result<(), Denial> {
        let rules = self.for_caller_and_action(caller, action)?;
        if rules.iter().any(|r| purpose_matches(r, purpose)) {
            Ok(())
        } else {
            Err(purpose_denial(caller, action, None, purpose))
        }
    }

    /// The decision for one field of one request.
    pub fn decide(
        &self,
        caller: &CallerId,
        action: Action,
        kind: FieldKind,
        purpose: Option<&Purpose>,
    ) -> Result<Grant, Denial> {
        let rules = self.for_caller_and_action(caller, action)?;
        let for_kind: Vec<&Rule> = rules
            .into_iter()
            .filter(|r| r.kinds.contains(&kind))
            .collect();
        if for_kind.is_empty() {
            return Err(Denial {
                on: DeniedOn::Kind,
                message: format!("caller '{caller}' may not {action} field kind '{kind}'"),
            });
        }
        for_kind
            .into_iter()
            .filter(|r| purpose_matches(r, purpose))
            .max_by_key(|r| r.reveal)
            .map(|r| Grant {
                reveal: r.reveal,
                rule: r.name.clone(),
            })
            .ok_or_else(|| purpose_denial(caller, action, Some(kind), purpose))
    }

    fn for_caller_and_action(
        &self,
        caller: &CallerId,
        action: Action,
    ) -> Result<Vec<&Rule>, Denial> {
        let for_caller: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.callers.iter().any(|c| c == caller.as_str()))
            .collect();
        if for_caller.is_empty() {
            return Err(Denial {
                on: DeniedOn::Caller,
                message: format!("no policy rule names caller '{caller}'"),
            });
        }
        let for_action: Vec<&Rule> = for_caller
            .into_iter()
            .filter(|r| r.action == action)
            .collect();
        if for_action.is_empty() {
            return Err(Denial {
                on: DeniedOn::Action,
                message: format!("caller '{caller}' has no rule allowing {action}"),
            });
        }
        Ok(for_action)
    }
}

fn purpose_matches(rule: &Rule, purpose: Option<&Purpose>) -> bool {
    match purpose {
        Some(p) => rule.purposes.is_empty() || rule.purposes.contains(p),
        None => rule.purposes.is_empty(),
    }
}

fn purpose_denial(
    caller: &CallerId,
    action: Action,
    kind: Option<FieldKind>,
    purpose: Option<&Purpose>,
) -> Denial {
    let what = match kind {
        Some(k) => format!("{action} field kind '{k}'"),
        None => action.to_string(),
    };
    let message = match purpose {
        Some(p) => format!("purpose '{p}' is not allowed for caller '{caller}' to {what}"),
        None => format!("caller '{caller}' must declare an allowed purpose to {what}"),
    };
    Denial {
        on: DeniedOn::Purpose,
        message,
    }
}

#[cfg(test)]
mod tests {
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
        );
        assert_eq!(g.map(|g| g.reveal), Ok(Some(RevealLevel::Full)));
        let g = p.decide(
            &caller("support"),
            Action::Detokenize,
            FieldKind::Address,
            Some(&cb),
        );
        assert_eq!(g.map(|g| g.reveal), Ok(Some(RevealLevel::Masked)));
    }

    #[test]
    fn denials_name_the_dimension_that_failed() {
        let p = policy();
        let cb = purpose("callback");
        let deny = |c: &str, a, k, pu: Option<&Purpose>| {
            p.decide(&caller(c), a, k, pu).err().map(|d| d.on)
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

        let d = p.check_call(&caller("support"), Action::Detokenize, Some(&mk));
        let msg = d.err().map(|d| d.to_string()).unwrap_or_default();
        assert!(msg.contains("purpose 'marketing'"), "{msg}");
    }

    #[test]
    fn an_empty_policy_denies_everything() {
        let p = Policy::from_toml("version = 1").unwrap_or_else(|e| panic!("{e}"));
        assert!(p
            .check_call(&caller("orders"), Action::Tokenize, None)
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
        let keys = |c: &CallerId| p.check_call(c, Action::Keys, None).map_err(|d| d.on);
        assert_eq!(keys(&caller("rotator")), Ok(()));
        let cn = CallerId::common_name("key-admin-cn").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys(&cn), Ok(()));
        assert_eq!(keys(&caller("orders")), Err(DeniedOn::Action));
        assert_eq!(keys(&caller("support")), Err(DeniedOn::Action));
        assert_eq!(keys(&caller("intruder")), Err(DeniedOn::Caller));
        let msg = p
            .check_call(&caller("support"), Action::Keys, None)
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
            p.check_call(&rotator, Action::Tokenize, None)
                .map_err(|d| d.on),
            Err(DeniedOn::Action)
        );
        assert_eq!(
            p.check_call(&rotator, Action::Detokenize, Some(&cb))
                .map_err(|d| d.on),
            Err(DeniedOn::Action)
        );
        for kind in FieldKind::ALL {
            for action in [Action::Tokenize, Action::Detokenize] {
                assert!(p.decide(&rotator, action, kind, Some(&cb)).is_err());
            }
            // Nor does asking with the keys action itself reach any kind.
            assert_eq!(
                p.decide(&rotator, Action::Keys, kind, None)
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
}
