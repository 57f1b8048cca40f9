//! IAM policy statements (from `aws_iam_policy_document` blocks or JSON) and a small
//! evaluator of requests against them, so tests can ask "may this principal do that?"
//! instead of reading statements.
//!
//! Covered: `Allow`/`Deny`, actions and resources with `*`/`?` wildcards, principals
//! (`*` or listed identifiers), and the condition operators the module and the snippets use
//! (`String*`, `Arn*`, `Bool`, `Null`, and their `ForAnyValue:` forms). As in IAM, a condition whose
//! key is absent from the request is false, except for the negated operators (`…Not…`),
//! which are then true; an explicit Deny wins over any Allow; nothing allowed is denied.

use std::collections::BTreeMap;

use serde_json::Value;

use super::terraform::{attr, Eval, Instance, Module, Scope};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
pub struct Condition {
    pub test: String,
    pub variable: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Statement {
    pub sid: String,
    pub effect: Effect,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    /// `(type, identifiers)`, matched against the request's principal (`*` matches
    /// anyone, a service principal its service name); empty for identity policies.
    pub principals: Vec<(String, Vec<String>)>,
    pub conditions: Vec<Condition>,
}

/// One request: who, what, on which resource, with which extra context keys.
/// `aws:PrincipalArn` is the principal; `aws:SecureTransport` is `true` unless set.
#[derive(Debug, Clone)]
pub struct Request {
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub context: BTreeMap<String, Vec<String>>,
}

impl Request {
    pub fn new(principal: &str, action: &str, resource: &str) -> Self {
        Request {
            principal: principal.to_string(),
            action: action.to_string(),
            resource: resource.to_string(),
            context: BTreeMap::new(),
        }
    }

    pub fn with(mut self, key: &str, values: &[&str]) -> Self {
        self.context.insert(
            key.to_string(),
            values.iter().map(|v| v.to_string()).collect(),
        );
        self
    }

    fn key(&self, name: &str) -> Option<Vec<String>> {
        match name {
            "aws:PrincipalArn" => Some(vec![self.principal.clone()]),
            "aws:SecureTransport" => Some(
                self.context
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| vec!["true".to_string()]),
            ),
            _ => self.context.get(name).cloned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    ExplicitlyDenied,
    NotAllowed,
}

/// IAM's evaluation of one policy (or several combined): an explicit Deny wins, then an
/// Allow, otherwise the request is not allowed.
pub fn decide(statements: &[Statement], request: &Request) -> Decision {
    let applies = |effect: Effect| {
        statements
            .iter()
            .filter(|s| s.effect == effect)
            .any(|s| s.applies_to(request))
    };
    if applies(Effect::Deny) {
        Decision::ExplicitlyDenied
    } else if applies(Effect::Allow) {
        Decision::Allowed
    } else {
        Decision::NotAllowed
    }
}

/// Whether any Deny statement of `statements` (a bucket policy, an SCP) stops `request`.
pub fn denies(statements: &[Statement], request: &Request) -> bool {
    decide(statements, request) == Decision::ExplicitlyDenied
}

/// Whether an identity policy grants `request` (and does not deny it).
pub fn allows(statements: &[Statement], request: &Request) -> bool {
    decide(statements, request) == Decision::Allowed
}

impl Statement {
    pub fn applies_to(&self, request: &Request) -> bool {
        let principal_ok = self.principals.is_empty()
            || self
                .principals
                .iter()
                .any(|(_, ids)| ids.iter().any(|id| glob(id, &request.principal)));
        principal_ok
            && self.actions.iter().any(|a| glob_ci(a, &request.action))
            && self.resources.iter().any(|r| glob(r, &request.resource))
            && self.conditions.iter().all(|c| c.holds(request))
    }
}

impl Condition {
    fn holds(&self, request: &Request) -> bool {
        let (any_value, test) = match self.test.strip_prefix("ForAnyValue:") {
            Some(t) => (true, t),
            None => (false, self.test.as_str()),
        };
        if test == "Null" {
            // "true": the key is absent from the request; "false": it is present.
            let absent = request.key(&self.variable).is_none();
            return self
                .values
                .iter()
                .any(|v| v.eq_ignore_ascii_case(if absent { "true" } else { "false" }));
        }
        let negated = test.contains("Not");
        let Some(actual) = request.key(&self.variable) else {
            return negated;
        };
        let matches_one = |a: &str| -> bool {
            self.values.iter().any(|v| match test {
                "StringEquals" | "StringNotEquals" | "ArnEquals" | "ArnNotEquals" => v == a,
                "StringLike" | "StringNotLike" | "ArnLike" | "ArnNotLike" => glob(v, a),
                "Bool" => v.eq_ignore_ascii_case(a),
                other => panic!("condition operator {other} is not evaluated here"),
            })
        };
        if any_value {
            assert!(
                !negated,
                "ForAnyValue with a negated operator is not evaluated"
            );
            return actual.iter().any(|a| matches_one(a));
        }
        // Single-valued keys: the condition holds when the value matches (or, negated,
        // matches none of the values).
        let matched = actual.iter().any(|a| matches_one(a));
        if negated {
            !matched
        } else {
            matched
        }
    }
}

/// IAM wildcard matching: `*` any run of characters, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// Actions are matched case-insensitively.
fn glob_ci(pattern: &str, text: &str) -> bool {
    glob(&pattern.to_ascii_lowercase(), &text.to_ascii_lowercase())
}

// ----------------------------------------------------------------------------------------
// Reading statements
// ----------------------------------------------------------------------------------------

/// The statements of one instance of `data.aws_iam_policy_document.<name>` (static and
/// `dynamic "statement"` blocks, with `dynamic "condition"` blocks inside).
pub fn document(module: &Module, eval: &Eval, name: &str, instance: &Instance) -> Vec<Statement> {
    let body = module.data("aws_iam_policy_document", name);
    for forbidden in ["source_policy_documents", "override_policy_documents"] {
        assert!(
            attr(body, forbidden).is_none(),
            "{name}: {forbidden} is not evaluated here"
        );
    }
    let scope = eval.at(instance);
    scope
        .expand(body, "statement")
        .into_iter()
        .map(|(st, scope)| statement_from_hcl(name, st, &scope))
        .collect()
}

/// The statements of a document with neither `for_each` nor `count`.
pub fn single_document(module: &Module, eval: &Eval, name: &str) -> Vec<Statement> {
    let instances = eval.instances(module.data("aws_iam_policy_document", name));
    assert_eq!(instances.len(), 1, "{name} has several instances");
    document(module, eval, name, &instances[0])
}

fn statement_from_hcl(doc: &str, body: &hcl::Body, scope: &Scope<'_>) -> Statement {
    for forbidden in ["not_actions", "not_resources", "not_principals"] {
        assert!(
            attr(body, forbidden).is_none(),
            "{doc}: {forbidden} is not allowed (it makes what is granted hard to read off)"
        );
    }
    let effect = match scope.attr_text(body, "effect").as_deref() {
        None | Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        Some(other) => panic!("{doc}: effect {other}"),
    };
    let list = |key: &str| {
        attr(body, key)
            .map(|e| scope.strings(e))
            .unwrap_or_default()
    };
    let principals = scope
        .expand(body, "principals")
        .into_iter()
        .map(|(p, s)| {
            (
                s.attr_text(p, "type").expect("principals type"),
                attr(p, "identifiers")
                    .map(|e| s.strings(e))
                    .expect("principals identifiers"),
            )
        })
        .collect();
    let conditions = scope
        .expand(body, "condition")
        .into_iter()
        .map(|(c, s)| Condition {
            test: s.attr_text(c, "test").expect("condition test"),
            variable: s.attr_text(c, "variable").expect("condition variable"),
            values: attr(c, "values")
                .map(|e| s.strings(e))
                .expect("condition values"),
        })
        .collect();
    Statement {
        sid: scope.attr_text(body, "sid").unwrap_or_default(),
        effect,
        actions: list("actions"),
        resources: list("resources"),
        principals,
        conditions,
    }
}

/// The statements of a JSON policy document (SCP, permissions boundary).
pub fn from_json(policy: &Value) -> Vec<Statement> {
    assert_eq!(policy["Version"], "2012-10-17", "policy Version");
    let one_or_many = |v: &Value| -> Vec<String> {
        match v {
            Value::Null => vec![],
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().expect("string").to_string())
                .collect(),
            other => panic!("expected a string or a list, got {other}"),
        }
    };
    policy["Statement"]
        .as_array()
        .expect("Statement list")
        .iter()
        .map(|st| {
            for forbidden in ["NotAction", "NotResource", "NotPrincipal"] {
                assert!(
                    st.get(forbidden).is_none(),
                    "{forbidden} is not evaluated here"
                );
            }
            let mut conditions = Vec::new();
            if let Some(ops) = st.get("Condition").and_then(Value::as_object) {
                for (test, keys) in ops {
                    for (variable, values) in keys.as_object().expect("condition keys") {
                        conditions.push(Condition {
                            test: test.clone(),
                            variable: variable.clone(),
                            values: one_or_many(values),
                        });
                    }
                }
            }
            Statement {
                sid: st["Sid"].as_str().unwrap_or_default().to_string(),
                effect: match st["Effect"].as_str() {
                    Some("Allow") => Effect::Allow,
                    Some("Deny") => Effect::Deny,
                    other => panic!("Effect {other:?}"),
                },
                actions: one_or_many(&st["Action"]),
                resources: one_or_many(&st["Resource"]),
                principals: vec![],
                conditions,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluator_follows_iam_rules() {
        assert!(glob("releases/*.tar.gz", "releases/a/b.tar.gz"));
        assert!(!glob("releases/*.tar.gz", "releases/.tar"));
        assert!(glob("arn:aws:iam::1:role/x-?", "arn:aws:iam::1:role/x-a"));
        let deny_unless = |principal: &str| Statement {
            sid: String::new(),
            effect: Effect::Deny,
            actions: vec!["s3:PutObject".into()],
            resources: vec!["b/*".into()],
            principals: vec![("*".into(), vec!["*".into()])],
            conditions: vec![Condition {
                test: "ArnNotLike".into(),
                variable: "aws:PrincipalArn".into(),
                values: vec![principal.into()],
            }],
        };
        let allow_all = Statement {
            sid: String::new(),
            effect: Effect::Allow,
            actions: vec!["s3:*".into()],
            resources: vec!["*".into()],
            principals: vec![],
            conditions: vec![],
        };
        let policy = vec![deny_unless("role/ci"), allow_all];
        assert_eq!(
            decide(&policy, &Request::new("role/ci", "s3:PutObject", "b/k")),
            Decision::Allowed
        );
        assert_eq!(
            decide(&policy, &Request::new("role/x", "s3:putobject", "b/k")),
            Decision::ExplicitlyDenied
        );
        assert_eq!(
            decide(
                &policy[..1],
                &Request::new("role/ci", "s3:GetObject", "b/k")
            ),
            Decision::NotAllowed
        );
        // A missing key: positive operators fail, negated ones hold.
        let tagged = Condition {
            test: "ForAnyValue:StringLike".into(),
            variable: "aws:TagKeys".into(),
            values: vec!["dropship:*".into()],
        };
        let req = Request::new("p", "ec2:CreateTags", "*");
        assert!(!tagged.holds(&req));
        assert!(tagged.holds(&req.clone().with("aws:TagKeys", &["Name", "dropship:app"])));
        assert!(!tagged.holds(&req.with("aws:TagKeys", &["Name"])));
    }
}
