//! Loading `infra/` and evaluating the Terraform that matters, without providers.
//!
//! Providers cannot be downloaded on the build machines, so `terraform validate`/`plan` cannot
//! run there. This module parses the HCL with `hcl-rs` and evaluates it with hcl-rs's
//! expression evaluator over a *scenario*: concrete values for the module's inputs (apps,
//! environments, GitHub subjects, uploader principals…), the Terraform functions the module
//! uses, and every resource and data source as an object whose attributes are symbols
//! (`${aws_iam_role.lambda.arn}`), so a test can see which resource an ARN is. Resources with
//! `for_each` or `count` become maps or lists of such objects (`${aws_iam_role.host["shop/prod"].name}`).
//! A few data sources get concrete values (account id, partition, region) so rendered ARNs
//! look like AWS's and can be fed to the Lambda's own configuration parser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::expr::Expression;
use hcl::{Block, Body, Map, Value as HclValue};
use serde_json::Value;

/// Account id the scenario's `data.aws_caller_identity.current` reports.
pub const ACCOUNT_ID: &str = "111122223333";
/// Partition and region of the scenario.
pub const PARTITION: &str = "aws";
pub const REGION: &str = "eu-west-1";

/// Attributes every resource and data-source object offers as a symbol.
const SYMBOL_ATTRIBUTES: &[&str] = &[
    "arn",
    "bucket",
    "function_name",
    "id",
    "invoke_arn",
    "issuer_arn",
    "json",
    "key_id",
    "name",
    "url",
];

/// The module's `.tf` files, as parsed blocks.
pub struct Module {
    pub dir: PathBuf,
    pub blocks: Vec<Block>,
}

impl Module {
    /// The module root `infra/` (not the examples).
    pub fn load() -> Self {
        Self::load_dir(&infra_dir())
    }

    /// Every `*.tf` file of one directory.
    pub fn load_dir(dir: &Path) -> Self {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|ext| ext == "tf"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no .tf files in {}", dir.display());
        let mut blocks = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            let body: Body =
                hcl::parse(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
            blocks.extend(body.into_blocks());
        }
        Module {
            dir: dir.to_path_buf(),
            blocks,
        }
    }

    /// `(name, body)` of every `<kind> "<ty>" "<name>"` block (`kind` = resource or data).
    pub fn all(&self, kind: &str, ty: &str) -> Vec<(&str, &Body)> {
        self.blocks
            .iter()
            .filter(|b| b.identifier() == kind)
            .filter(|b| b.labels().first().map(|l| l.as_str()) == Some(ty))
            .map(|b| {
                let name = b.labels().get(1).map(|l| l.as_str()).unwrap_or_default();
                (name, b.body())
            })
            .collect()
    }

    pub fn resources(&self, ty: &str) -> Vec<(&str, &Body)> {
        self.all("resource", ty)
    }

    pub fn resource(&self, ty: &str, name: &str) -> &Body {
        self.find("resource", ty, name)
    }

    pub fn data(&self, ty: &str, name: &str) -> &Body {
        self.find("data", ty, name)
    }

    fn find(&self, kind: &str, ty: &str, name: &str) -> &Body {
        self.all(kind, ty)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("{kind} {ty}.{name} not found in {}", self.dir.display()))
    }

    /// The one resource of a type (the module creates exactly one bucket, function…).
    pub fn single(&self, ty: &str) -> (&str, &Body) {
        let all = self.resources(ty);
        assert_eq!(
            all.len(),
            1,
            "expected exactly one {ty} in infra/, found {:?}",
            all.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        all[0]
    }

    /// Labels of every block of a kind (`variable`, `output`).
    pub fn declared(&self, kind: &str) -> Vec<String> {
        self.blocks
            .iter()
            .filter(|b| b.identifier() == kind)
            .map(|b| b.labels()[0].as_str().to_string())
            .collect()
    }

    /// The `variable` block of one input.
    pub fn variable(&self, name: &str) -> &Body {
        self.blocks
            .iter()
            .find(|b| b.identifier() == "variable" && b.labels()[0].as_str() == name)
            .map(|b| b.body())
            .unwrap_or_else(|| panic!("variable {name} not declared in infra/"))
    }

    /// An evaluator over `scenario` (input values by name; inputs not given take their
    /// default, or a `${var.<name>}` symbol when they have none).
    pub fn evaluator(&self, scenario: &[(&str, Value)]) -> Eval {
        let mut ctx = Context::new();
        declare_functions(&mut ctx);

        let given: BTreeMap<&str, &Value> = scenario.iter().map(|(k, v)| (*k, v)).collect();
        let mut vars = Map::new();
        for block in self.blocks.iter().filter(|b| b.identifier() == "variable") {
            let name = block.labels()[0].as_str();
            let value = match (given.get(name), attr(block.body(), "default")) {
                (Some(v), _) => to_hcl(v),
                (None, Some(default)) => default
                    .evaluate(&ctx)
                    .unwrap_or_else(|e| panic!("default of var.{name}: {e}")),
                (None, None) => HclValue::String(format!("${{var.{name}}}")),
            };
            vars.insert(name.to_string(), value);
        }
        for name in given.keys() {
            assert!(
                vars.contains_key(*name),
                "scenario sets var.{name}, which infra/ does not declare"
            );
        }
        ctx.declare_var("var", HclValue::Object(vars));

        let mut path = Map::new();
        path.insert(
            "module".to_string(),
            HclValue::String(self.dir.display().to_string()),
        );
        ctx.declare_var("path", HclValue::Object(path));

        let mut eval = Eval { ctx };
        eval.declare_locals_and_resources(self);
        eval
    }
}

pub fn infra_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra")
}

pub fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

pub fn blocks<'a>(body: &'a Body, ident: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks().filter(move |b| b.identifier() == ident)
}

/// The evaluated module: `var`, `local`, `path`, `data` and every resource type declared.
pub struct Eval {
    ctx: Context<'static>,
}

/// One instance of a `for_each` / `count` / single block: its key (none for a single
/// block), and the `each` or `count` binding it is evaluated with.
#[derive(Clone, Debug)]
pub struct Instance {
    pub key: Option<String>,
    binding: Option<(&'static str, HclValue)>,
}

impl Instance {
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("")
    }
}

impl Eval {
    /// Locals, resources and data sources refer to each other (a resource's `for_each`
    /// reads a local, a local reads resource ARNs or the account id), so they are resolved
    /// together, round after round, until nothing is left.
    fn declare_locals_and_resources(&mut self, module: &Module) {
        let mut pending_locals: Vec<(String, Expression)> = module
            .blocks
            .iter()
            .filter(|b| b.identifier() == "locals")
            .flat_map(|b| b.body().attributes())
            .map(|a| (a.key().to_string(), a.expr().clone()))
            .collect();
        let mut pending_blocks: Vec<&Block> = module
            .blocks
            .iter()
            .filter(|b| matches!(b.identifier(), "resource" | "data"))
            .collect();
        let mut locals = Map::new();
        let mut resources: BTreeMap<String, Map<String, HclValue>> = BTreeMap::new();
        let mut data: BTreeMap<String, Map<String, HclValue>> = BTreeMap::new();
        loop {
            self.ctx
                .declare_var("local", HclValue::Object(locals.clone()));
            for (ty, by_name) in &resources {
                self.ctx
                    .declare_var(ty.as_str(), HclValue::Object(by_name.clone()));
            }
            let data_value: Map<String, HclValue> = data
                .iter()
                .map(|(ty, by_name)| (ty.clone(), HclValue::Object(by_name.clone())))
                .collect();
            self.ctx.declare_var("data", HclValue::Object(data_value));
            if pending_locals.is_empty() && pending_blocks.is_empty() {
                return;
            }

            let mut progressed = false;
            let mut errors = Vec::new();
            pending_locals.retain(|(name, expr)| match expr.evaluate(&self.ctx) {
                Ok(v) => {
                    locals.insert(name.clone(), v);
                    progressed = true;
                    false
                }
                Err(e) => {
                    errors.push(format!("local.{name}: {e}"));
                    true
                }
            });
            pending_blocks.retain(|block| {
                let (ty, name) = (block.labels()[0].as_str(), block.labels()[1].as_str());
                let is_data = block.identifier() == "data";
                let address = if is_data {
                    format!("data.{ty}.{name}")
                } else {
                    format!("{ty}.{name}")
                };
                match self.block_value(&address, ty, block.body()) {
                    Ok(value) => {
                        let table = if is_data { &mut data } else { &mut resources };
                        table
                            .entry(ty.to_string())
                            .or_default()
                            .insert(name.to_string(), value);
                        progressed = true;
                        false
                    }
                    Err(e) => {
                        errors.push(e);
                        true
                    }
                }
            });
            assert!(
                progressed,
                "cannot evaluate infra/ in this scenario:\n  {}",
                errors.join("\n  ")
            );
        }
    }

    /// What a reference to a block evaluates to: symbols, keyed by `for_each` key or
    /// indexed by `count`; the data sources for the account, partition and region carry
    /// the scenario's concrete values.
    fn block_value(&self, address: &str, ty: &str, body: &Body) -> Result<HclValue, String> {
        if let Some(for_each) = attr(body, "for_each") {
            let collection = for_each
                .evaluate(&self.ctx)
                .map_err(|e| format!("{address}.for_each: {e}"))?;
            let mut by_key = Map::new();
            for (key, _) in each_entries(&collection) {
                let value = symbol_object(&format!("{address}[\"{key}\"]"));
                by_key.insert(key, value);
            }
            return Ok(HclValue::Object(by_key));
        }
        if let Some(count) = attr(body, "count") {
            let n = count
                .evaluate(&self.ctx)
                .map_err(|e| format!("{address}.count: {e}"))?;
            let n = n
                .as_u64()
                .ok_or_else(|| format!("{address}.count is not a number: {n}"))?;
            return Ok(HclValue::Array(
                (0..n)
                    .map(|i| symbol_object(&format!("{address}[{i}]")))
                    .collect(),
            ));
        }
        let mut object = symbol_object(address);
        if let HclValue::Object(o) = &mut object {
            match ty {
                "aws_caller_identity" => {
                    o.insert("account_id".into(), ACCOUNT_ID.into());
                }
                "aws_partition" => {
                    o.insert("partition".into(), PARTITION.into());
                }
                "aws_region" => {
                    o.insert("name".into(), REGION.into());
                }
                _ => {}
            }
        }
        Ok(object)
    }

    /// Evaluates an expression at module level.
    pub fn eval(&self, expr: &Expression) -> Value {
        self.eval_in(&self.ctx, expr)
    }

    fn eval_in(&self, ctx: &Context, expr: &Expression) -> Value {
        let value = expr.evaluate(ctx).unwrap_or_else(|e| {
            panic!(
                "evaluating `{}`: {e}",
                hcl::format::to_string(expr).unwrap_or_default()
            )
        });
        serde_json::to_value(&value).expect("HCL value as JSON")
    }

    pub fn text(&self, expr: &Expression) -> String {
        as_text(&self.eval(expr))
    }

    pub fn strings(&self, expr: &Expression) -> Vec<String> {
        strings_of(&self.eval(expr))
    }

    /// A local's value.
    pub fn local(&self, name: &str) -> Value {
        let local = hcl::expr::Traversal::builder(hcl::expr::Variable::unchecked("local"))
            .attr(name)
            .build();
        self.eval(&Expression::from(local))
    }

    /// The instances a block body stands for: one per `for_each` key, one per `count`
    /// index, or the single block itself.
    pub fn instances(&self, body: &Body) -> Vec<Instance> {
        if let Some(for_each) = attr(body, "for_each") {
            let collection = for_each
                .evaluate(&self.ctx)
                .unwrap_or_else(|e| panic!("for_each: {e}"));
            return each_entries(&collection)
                .into_iter()
                .map(|(key, value)| {
                    let mut each = Map::new();
                    each.insert("key".into(), HclValue::String(key.clone()));
                    each.insert("value".into(), value);
                    Instance {
                        key: Some(key),
                        binding: Some(("each", HclValue::Object(each))),
                    }
                })
                .collect();
        }
        if let Some(count) = attr(body, "count") {
            let n = self.eval(count).as_u64().expect("count is a number");
            return (0..n)
                .map(|i| {
                    let mut count = Map::new();
                    count.insert("index".into(), HclValue::from(i));
                    Instance {
                        key: Some(i.to_string()),
                        binding: Some(("count", HclValue::Object(count))),
                    }
                })
                .collect();
        }
        vec![Instance {
            key: None,
            binding: None,
        }]
    }

    /// A view of the module evaluated inside one instance (`each`/`count` bound).
    pub fn at(&self, instance: &Instance) -> Scope<'_> {
        let mut ctx = self.ctx.clone();
        if let Some((name, value)) = &instance.binding {
            ctx.declare_var(*name, value.clone());
        }
        Scope { eval: self, ctx }
    }
}

/// Evaluation inside one block instance, with its iterator variables bound.
pub struct Scope<'e> {
    eval: &'e Eval,
    ctx: Context<'static>,
}

impl Scope<'_> {
    pub fn eval(&self, expr: &Expression) -> Value {
        self.eval.eval_in(&self.ctx, expr)
    }

    pub fn text(&self, expr: &Expression) -> String {
        as_text(&self.eval(expr))
    }

    pub fn strings(&self, expr: &Expression) -> Vec<String> {
        strings_of(&self.eval(expr))
    }

    pub fn attr_text(&self, body: &Body, key: &str) -> Option<String> {
        attr(body, key).map(|e| self.text(e))
    }

    /// The `ident` blocks of `body`, static ones and those a `dynamic "ident"` block
    /// generates, each with the scope its content is evaluated in.
    pub fn expand<'b>(&self, body: &'b Body, ident: &str) -> Vec<(&'b Body, Scope<'_>)> {
        let mut out = Vec::new();
        for block in body.blocks() {
            if block.identifier() == ident {
                out.push((block.body(), self.child(None)));
            } else if block.identifier() == "dynamic"
                && block.labels().first().map(|l| l.as_str()) == Some(ident)
            {
                let iterator = attr(block.body(), "iterator")
                    .map(|e| self.text(e))
                    .unwrap_or_else(|| ident.to_string());
                let for_each = attr(block.body(), "for_each").expect("dynamic for_each");
                let collection = for_each
                    .evaluate(&self.ctx)
                    .unwrap_or_else(|e| panic!("dynamic \"{ident}\" for_each: {e}"));
                let content = blocks(block.body(), "content")
                    .next()
                    .unwrap_or_else(|| panic!("dynamic \"{ident}\" without content"));
                for (key, value) in each_entries(&collection) {
                    let mut it = Map::new();
                    it.insert("key".into(), HclValue::String(key));
                    it.insert("value".into(), value);
                    out.push((
                        content.body(),
                        self.child(Some((iterator.clone(), HclValue::Object(it)))),
                    ));
                }
            }
        }
        out
    }

    fn child(&self, binding: Option<(String, HclValue)>) -> Scope<'_> {
        let mut ctx = self.ctx.clone();
        if let Some((name, value)) = binding {
            ctx.declare_var(name, value);
        }
        Scope {
            eval: self.eval,
            ctx,
        }
    }
}

pub fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn strings_of(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().map(as_text).collect(),
        other => vec![as_text(other)],
    }
}

/// `"${aws_iam_role.lambda.arn}"` → `Some("lambda")` for `ty` = `aws_iam_role`;
/// `"${data.aws_iam_policy_document.uploader["shop/prod"].json}"` → `Some("uploader")`.
pub fn referenced(ty: &str, value: &str) -> Option<String> {
    let inner = value.strip_prefix("${")?.strip_suffix('}')?;
    let inner = inner.strip_prefix("data.").unwrap_or(inner);
    let rest = inner.strip_prefix(ty)?.strip_prefix('.')?;
    let name = rest.split(['.', '[']).next()?;
    Some(name.to_string())
}

/// The symbol of one attribute of a resource address: `${<address>.<attribute>}`.
pub fn symbol(address: &str, attribute: &str) -> String {
    format!("${{{address}.{attribute}}}")
}

fn symbol_object(address: &str) -> HclValue {
    let mut o = Map::new();
    for a in SYMBOL_ATTRIBUTES {
        o.insert(a.to_string(), HclValue::String(symbol(address, a)));
    }
    HclValue::Object(o)
}

/// `for_each` semantics: a map gives its entries, a set/list of strings gives each string
/// as key and value.
fn each_entries(collection: &HclValue) -> Vec<(String, HclValue)> {
    match collection {
        HclValue::Object(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        HclValue::Array(items) => items
            .iter()
            .map(|v| (v.as_str().unwrap_or_default().to_string(), v.clone()))
            .collect(),
        other => panic!("for_each over {other}"),
    }
}

pub fn to_hcl(value: &Value) -> HclValue {
    hcl::to_value(value).expect("JSON value as HCL")
}

fn from_hcl(value: &HclValue) -> Value {
    serde_json::to_value(value).expect("HCL value as JSON")
}

// ----------------------------------------------------------------------------------------
// The Terraform functions the module uses (same semantics for the inputs it passes).
// ----------------------------------------------------------------------------------------

fn declare_functions(ctx: &mut Context) {
    let any = || ParamType::Any;
    let string = || ParamType::String;
    let fixed = |params: Vec<ParamType>, f: fn(FuncArgs) -> Result<HclValue, String>| {
        FuncDef::new(f, params)
    };
    let variadic = |params: Vec<ParamType>, f: fn(FuncArgs) -> Result<HclValue, String>| {
        FuncDef::builder()
            .params(params)
            .variadic_param(ParamType::Any)
            .build(f)
    };
    ctx.declare_func("jsonencode", fixed(vec![any()], tf_jsonencode));
    ctx.declare_func("jsondecode", fixed(vec![string()], tf_jsondecode));
    ctx.declare_func("tostring", fixed(vec![any()], tf_tostring));
    ctx.declare_func("tolist", fixed(vec![any()], tf_identity));
    ctx.declare_func("toset", fixed(vec![any()], tf_distinct));
    ctx.declare_func("distinct", fixed(vec![any()], tf_distinct));
    ctx.declare_func("concat", variadic(vec![], tf_concat));
    ctx.declare_func("join", fixed(vec![string(), any()], tf_join));
    ctx.declare_func("coalescelist", variadic(vec![], tf_coalescelist));
    ctx.declare_func("flatten", fixed(vec![any()], tf_flatten));
    ctx.declare_func("keys", fixed(vec![any()], tf_keys));
    ctx.declare_func("values", fixed(vec![any()], tf_values));
    ctx.declare_func("length", fixed(vec![any()], tf_length));
    ctx.declare_func("lookup", variadic(vec![any(), string()], tf_lookup));
    ctx.declare_func("contains", fixed(vec![any(), any()], tf_contains));
    ctx.declare_func("setproduct", fixed(vec![any(), any()], tf_setproduct));
    ctx.declare_func(
        "replace",
        fixed(vec![string(), string(), string()], tf_replace),
    );
    ctx.declare_func("startswith", fixed(vec![string(), string()], tf_startswith));
    ctx.declare_func("endswith", fixed(vec![string(), string()], tf_endswith));
    ctx.declare_func(
        "strcontains",
        fixed(vec![string(), string()], tf_strcontains),
    );
    ctx.declare_func("split", fixed(vec![string(), string()], tf_split));
    ctx.declare_func("element", fixed(vec![any(), any()], tf_element));
    ctx.declare_func("alltrue", fixed(vec![any()], tf_alltrue));
    ctx.declare_func("one", fixed(vec![any()], tf_one));
    ctx.declare_func("file", fixed(vec![string()], tf_file));
}

fn arg_list(v: &HclValue) -> Result<Vec<HclValue>, String> {
    v.as_array()
        .cloned()
        .ok_or_else(|| format!("expected a list, got {v}"))
}

fn tf_jsonencode(args: FuncArgs) -> Result<HclValue, String> {
    serde_json::to_string(&from_hcl(&args[0]))
        .map(HclValue::String)
        .map_err(|e| e.to_string())
}

fn tf_jsondecode(args: FuncArgs) -> Result<HclValue, String> {
    let json: Value = serde_json::from_str(args[0].as_str().unwrap_or_default())
        .map_err(|e| format!("jsondecode: {e}"))?;
    Ok(to_hcl(&json))
}

fn tf_tostring(args: FuncArgs) -> Result<HclValue, String> {
    Ok(HclValue::String(as_text(&from_hcl(&args[0]))))
}

fn tf_identity(args: FuncArgs) -> Result<HclValue, String> {
    Ok(args[0].clone())
}

fn tf_distinct(args: FuncArgs) -> Result<HclValue, String> {
    let mut out: Vec<HclValue> = Vec::new();
    for v in arg_list(&args[0])? {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(HclValue::Array(out))
}

fn tf_concat(args: FuncArgs) -> Result<HclValue, String> {
    let mut out = Vec::new();
    for a in args.iter() {
        out.extend(arg_list(a)?);
    }
    Ok(HclValue::Array(out))
}

fn tf_join(args: FuncArgs) -> Result<HclValue, String> {
    let sep = args[0].as_str().unwrap_or_default().to_owned();
    let items: Vec<String> = arg_list(&args[1])?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("join: {v} is not a string"))
        })
        .collect::<Result<_, _>>()?;
    Ok(HclValue::String(items.join(&sep)))
}

fn tf_coalescelist(args: FuncArgs) -> Result<HclValue, String> {
    for a in args.iter() {
        if !arg_list(a)?.is_empty() {
            return Ok(a.clone());
        }
    }
    Err("coalescelist: every list is empty".into())
}

fn tf_flatten(args: FuncArgs) -> Result<HclValue, String> {
    fn walk(v: &HclValue, out: &mut Vec<HclValue>) {
        match v {
            HclValue::Array(items) => items.iter().for_each(|i| walk(i, out)),
            other => out.push(other.clone()),
        }
    }
    let mut out = Vec::new();
    walk(&args[0], &mut out);
    Ok(HclValue::Array(out))
}

fn tf_keys(args: FuncArgs) -> Result<HclValue, String> {
    let map = args[0].as_object().ok_or("keys: expected a map")?;
    Ok(HclValue::Array(
        map.keys().map(|k| HclValue::String(k.clone())).collect(),
    ))
}

fn tf_values(args: FuncArgs) -> Result<HclValue, String> {
    let map = args[0].as_object().ok_or("values: expected a map")?;
    Ok(HclValue::Array(map.values().cloned().collect()))
}

fn tf_length(args: FuncArgs) -> Result<HclValue, String> {
    let n = match &args[0] {
        HclValue::Array(a) => a.len(),
        HclValue::Object(o) => o.len(),
        HclValue::String(s) => s.chars().count(),
        other => return Err(format!("length of {other}")),
    };
    Ok(HclValue::from(n as u64))
}

fn tf_lookup(args: FuncArgs) -> Result<HclValue, String> {
    let map = args[0].as_object().ok_or("lookup: expected a map")?;
    let key = args[1].as_str().unwrap_or_default();
    match (map.get(key), args.get(2)) {
        (Some(v), _) => Ok(v.clone()),
        (None, Some(default)) => Ok(default.clone()),
        (None, None) => Err(format!("lookup: no key {key}")),
    }
}

fn tf_contains(args: FuncArgs) -> Result<HclValue, String> {
    Ok(HclValue::Bool(arg_list(&args[0])?.contains(&args[1])))
}

fn tf_setproduct(args: FuncArgs) -> Result<HclValue, String> {
    let (a, b) = (arg_list(&args[0])?, arg_list(&args[1])?);
    Ok(HclValue::Array(
        a.iter()
            .flat_map(|x| {
                b.iter()
                    .map(move |y| HclValue::Array(vec![x.clone(), y.clone()]))
            })
            .collect(),
    ))
}

fn tf_replace(args: FuncArgs) -> Result<HclValue, String> {
    let (s, from, to) = (
        args[0].as_str().unwrap_or_default(),
        args[1].as_str().unwrap_or_default(),
        args[2].as_str().unwrap_or_default(),
    );
    if from.len() > 1 && from.starts_with('/') && from.ends_with('/') {
        return Err("replace: regular expressions are not evaluated here".into());
    }
    Ok(HclValue::String(s.replace(from, to)))
}

fn tf_startswith(args: FuncArgs) -> Result<HclValue, String> {
    let (s, prefix) = (
        args[0].as_str().unwrap_or_default(),
        args[1].as_str().unwrap_or_default(),
    );
    Ok(HclValue::Bool(s.starts_with(prefix)))
}

fn tf_endswith(args: FuncArgs) -> Result<HclValue, String> {
    let (s, suffix) = (
        args[0].as_str().unwrap_or_default(),
        args[1].as_str().unwrap_or_default(),
    );
    Ok(HclValue::Bool(s.ends_with(suffix)))
}

fn tf_strcontains(args: FuncArgs) -> Result<HclValue, String> {
    let (s, part) = (
        args[0].as_str().unwrap_or_default(),
        args[1].as_str().unwrap_or_default(),
    );
    Ok(HclValue::Bool(s.contains(part)))
}

fn tf_split(args: FuncArgs) -> Result<HclValue, String> {
    let (sep, s) = (
        args[0].as_str().unwrap_or_default(),
        args[1].as_str().unwrap_or_default(),
    );
    Ok(HclValue::Array(
        s.split(sep).map(|p| HclValue::String(p.into())).collect(),
    ))
}

fn tf_element(args: FuncArgs) -> Result<HclValue, String> {
    let list = arg_list(&args[0])?;
    let index = args[1]
        .as_u64()
        .ok_or_else(|| format!("element: index {} is not a whole number", args[1]))?
        as usize;
    if list.is_empty() {
        return Err("element: empty list".into());
    }
    Ok(list[index % list.len()].clone())
}

fn tf_alltrue(args: FuncArgs) -> Result<HclValue, String> {
    let mut all = true;
    for v in arg_list(&args[0])? {
        all &= v
            .as_bool()
            .ok_or_else(|| format!("alltrue: {v} is not a bool"))?;
    }
    Ok(HclValue::Bool(all))
}

fn tf_one(args: FuncArgs) -> Result<HclValue, String> {
    let items = arg_list(&args[0])?;
    match items.len() {
        0 => Ok(HclValue::Null),
        1 => Ok(items[0].clone()),
        n => Err(format!("one: {n} elements")),
    }
}

fn tf_file(args: FuncArgs) -> Result<HclValue, String> {
    let path = args[0].as_str().unwrap_or_default();
    std::fs::read_to_string(path)
        .map(HclValue::String)
        .map_err(|e| format!("file({path}): {e}"))
}
