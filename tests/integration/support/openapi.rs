//! Checks requests against the providers' official OpenAPI / Swagger descriptions
//! (copied under tests/fixtures/specs): the operation must exist for the method and
//! path, query parameters must be declared and in range, and the JSON body must
//! satisfy the operation's schema with no undeclared properties.

use serde_json::{Map, Value, json};

pub struct Spec {
    doc: Value,
    base_path: String,
}

pub struct Operation<'a> {
    pub id: String,
    pub template: String,
    op: &'a Value,
    spec: &'a Spec,
}

impl Spec {
    pub fn load(name: &str) -> Spec {
        let path = format!("{}/tests/fixtures/specs/{name}.json", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        // Swagger 2 has basePath; OpenAPI 3 has servers[].url with an optional path.
        let base_path = match doc.get("basePath").and_then(Value::as_str) {
            Some(b) => b.trim_end_matches('/').to_string(),
            None => doc["servers"][0]["url"]
                .as_str()
                .and_then(|u| u.split("://").nth(1))
                .and_then(|rest| {
                    rest.find('/')
                        .map(|i| rest[i..].trim_end_matches('/').to_string())
                })
                .unwrap_or_default(),
        };
        Spec { doc, base_path }
    }

    /// The operation for `method` on a concrete (still percent-encoded) path.
    pub fn operation(&self, method: &str, path: &str) -> Result<Operation<'_>, String> {
        let path = path.strip_prefix(&self.base_path).unwrap_or(path);
        self.find(method, path).or_else(|e| {
            // Atlassian's REST modules answer under their version and under `latest`;
            // Bitbucket Data Center's spec writes `latest`.
            let latest = path.replacen("/1.0/", "/latest/", 1);
            if latest == path {
                Err(e)
            } else {
                self.find(method, &latest)
            }
        })
    }

    fn find(&self, method: &str, path: &str) -> Result<Operation<'_>, String> {
        let method = method.to_ascii_lowercase();
        let paths = self.doc["paths"].as_object().ok_or("spec has no paths")?;
        for (template, item) in paths {
            if !template_matches(template, path, item, &method) {
                continue;
            }
            let op = item
                .get(&method)
                .ok_or_else(|| format!("{method} not allowed on {template}"))?;
            return Ok(Operation {
                // Bitbucket Cloud's spec names no operations.
                id: op["operationId"]
                    .as_str()
                    .map_or_else(|| format!("{method} {template}"), str::to_string),
                template: template.clone(),
                op,
                spec: self,
            });
        }
        Err(format!("no operation matches {method} {path}"))
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => self
                .doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or(&Value::Null),
            None => v,
        }
    }

    /// Inlines `$ref`s, turns OpenAPI `nullable` into JSON Schema, and forbids
    /// properties the schema does not declare.
    fn strict_schema(&self, v: &Value, depth: usize) -> Value {
        assert!(depth < 32, "schema nesting too deep");
        let v = self.resolve(v);
        match v {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, child) in m {
                    if k.starts_with("x-")
                        || k == "example"
                        || k == "examples"
                        || k == "nullable"
                        || k == "readOnly"
                    {
                        continue;
                    }
                    let child = match k.as_str() {
                        "properties" => Value::Object(
                            child
                                .as_object()
                                .map(|props| {
                                    props
                                        .iter()
                                        .filter(|(_, s)| {
                                            !self
                                                .resolve(s)
                                                .get("readOnly")
                                                .and_then(Value::as_bool)
                                                .unwrap_or(false)
                                        })
                                        .map(|(name, s)| (name.clone(), self.strict_schema(s, depth + 1)))
                                        .collect()
                                })
                                .unwrap_or_default(),
                        ),
                        "items" | "additionalProperties" if child.is_object() => {
                            self.strict_schema(child, depth + 1)
                        }
                        "allOf" | "anyOf" | "oneOf" => Value::Array(
                            child
                                .as_array()
                                .map(|a| a.iter().map(|s| self.strict_schema(s, depth + 1)).collect())
                                .unwrap_or_default(),
                        ),
                        _ => child.clone(),
                    };
                    out.insert(k.clone(), child);
                }
                if m.get("nullable").and_then(Value::as_bool) == Some(true)
                    && let Some(t) = out.get("type").cloned()
                {
                    out.insert("type".into(), json!([t, "null"]));
                }
                if out.contains_key("properties") && !out.contains_key("additionalProperties") {
                    out.insert("additionalProperties".into(), json!(false));
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }
}

/// Responses may carry fields a spec subset leaves out; only requests are strict.
fn allow_additional(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("additionalProperties") == Some(&Value::Bool(false)) {
                m.remove("additionalProperties");
            }
            m.values_mut().for_each(allow_additional);
        }
        Value::Array(a) => a.iter_mut().for_each(allow_additional),
        _ => {}
    }
}

fn template_matches(template: &str, path: &str, item: &Value, method: &str) -> bool {
    let multi: Vec<String> = item
        .get(method)
        .and_then(|op| op.get("parameters"))
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter(|p| p.get("x-multi-segment").and_then(Value::as_bool) == Some(true))
                .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let t: Vec<&str> = template.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    segments_match(&t, &p, &multi)
}

fn segments_match(t: &[&str], p: &[&str], multi: &[String]) -> bool {
    match (t.first(), p.first()) {
        (None, None) => true,
        (Some(ts), Some(ps)) => {
            if let Some(name) = ts.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if ps.is_empty() {
                    return false;
                }
                if multi.iter().any(|m| m == name) {
                    // Greedy but leaves room for the rest of the template.
                    (1..=p.len())
                        .rev()
                        .any(|n| segments_match(&t[1..], &p[n..], multi))
                } else {
                    segments_match(&t[1..], &p[1..], multi)
                }
            } else {
                *ts == *ps && segments_match(&t[1..], &p[1..], multi)
            }
        }
        _ => false,
    }
}

impl Operation<'_> {
    fn parameters(&self) -> Vec<&Value> {
        self.op
            .get("parameters")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().map(|p| self.spec.resolve(p)).collect())
            .unwrap_or_default()
    }

    /// Validates query parameters and the JSON body. Errors say what is wrong.
    pub fn validate(&self, query: &[(String, String)], body: Option<&Value>) -> Result<(), String> {
        let params = self.parameters();
        for (name, value) in query {
            if self.is_envelope_param(name, value)? {
                continue;
            }
            let Some(p) = params
                .iter()
                .find(|p| p["in"] == "query" && p["name"] == name.as_str())
            else {
                return Err(format!("{}: undeclared query parameter {name:?}", self.id));
            };
            let schema = p.get("schema").unwrap_or(p);
            if schema["type"] == "integer" {
                let n: i64 = value
                    .parse()
                    .map_err(|_| format!("{}: {name}={value:?} is not an integer", self.id))?;
                // GitHub states some limits only in prose: "(max 100)".
                let documented_max = p["description"]
                    .as_str()
                    .and_then(|d| d.split("(max ").nth(1))
                    .and_then(|rest| rest.split(')').next())
                    .and_then(|n| n.trim().parse::<i64>().ok());
                if let Some(max) = schema["maximum"].as_i64().or(documented_max)
                    && n > max
                {
                    return Err(format!("{}: {name}={n} above maximum {max}", self.id));
                }
                if let Some(min) = schema["minimum"].as_i64()
                    && n < min
                {
                    return Err(format!("{}: {name}={n} below minimum {min}", self.id));
                }
            }
            if let Some(allowed) = schema["enum"].as_array()
                && !allowed.iter().any(|a| a.as_str() == Some(value))
            {
                return Err(format!("{}: {name}={value:?} not one of {allowed:?}", self.id));
            }
        }
        for p in &params {
            if p["in"] == "query"
                && p["required"] == true
                && !query.iter().any(|(n, _)| p["name"] == n.as_str())
            {
                return Err(format!(
                    "{}: required query parameter {} missing",
                    self.id, p["name"]
                ));
            }
        }
        let body_schema = self
            .op
            .pointer("/requestBody/content/application~1json/schema")
            // Bitbucket Data Center declares its JSON bodies as any media type.
            .or_else(|| self.op.pointer("/requestBody/content/*~1*/schema"))
            .or_else(|| {
                params
                    .iter()
                    .find(|p| p["in"] == "body")
                    .and_then(|p| p.get("schema"))
            });
        match (body_schema, body) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(format!("{}: takes no body", self.id)),
            (Some(_), None) => {
                let required = self.op.pointer("/requestBody/required") == Some(&Value::Bool(true))
                    || params.iter().any(|p| p["in"] == "body" && p["required"] == true);
                if required {
                    Err(format!("{}: body required", self.id))
                } else {
                    Ok(())
                }
            }
            (Some(schema), Some(body)) => self.check(&self.spec.strict_schema(schema, 0), body, &self.id),
        }
    }

    /// Bitbucket Cloud declares `page` and `pagelen` once, in the envelope its lists
    /// answer with (`pagelen`: "100 being the maximum allowed value"), not per
    /// operation: they are declared for an operation whose 200 answer has them.
    fn is_envelope_param(&self, name: &str, value: &str) -> Result<bool, String> {
        let envelope = self
            .op
            .pointer("/responses/200/schema")
            .map(|s| self.spec.resolve(s))
            .and_then(|s| s.get("properties"));
        let max = match name {
            "pagelen" => 100,
            "page" => i64::MAX,
            _ => return Ok(false),
        };
        if envelope.and_then(|p| p.get(name)).is_none() {
            return Ok(false);
        }
        match value.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(true),
            _ => Err(format!(
                "{}: {name}={value:?} not an integer from 1 to {max}",
                self.id
            )),
        }
    }

    /// Checks a fake's response body against the operation's response schema, so the
    /// fakes answer in the shape the real API does (extra fields allowed).
    pub fn validate_response(&self, status: u16, body: &Value) -> Result<(), String> {
        let resp = self
            .op
            .pointer(&format!("/responses/{status}"))
            .map(|r| self.spec.resolve(r))
            .ok_or_else(|| format!("{}: no response {status} declared", self.id))?;
        let Some(schema) = resp
            .pointer("/content/application~1json/schema")
            .or_else(|| resp.get("schema"))
        else {
            return Ok(());
        };
        let mut schema = self.spec.strict_schema(schema, 0);
        allow_additional(&mut schema);
        self.check(&schema, body, &format!("{} response {status}", self.id))
    }

    /// Every way `body` breaks `schema`, as one error naming `what`.
    fn check(&self, schema: &Value, body: &Value, what: &str) -> Result<(), String> {
        let validator = jsonschema::draft4::new(schema).map_err(|e| format!("{what}: bad schema: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("{what}: {}", errors.join("; ")))
        }
    }

    /// The spec's example response body for `status`, if it has one.
    pub fn example_response(&self, status: u16) -> Option<Value> {
        let resp = self
            .spec
            .resolve(self.op.pointer(&format!("/responses/{status}"))?);
        let content = resp.pointer("/content/application~1json")?;
        content
            .pointer("/examples/default/value")
            .or_else(|| content.get("example"))
            .or_else(|| {
                content
                    .get("examples")
                    .and_then(Value::as_object)
                    .and_then(|m| m.values().next())
                    .and_then(|e| self.spec.resolve(e).get("value"))
            })
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    // The validator itself must be able to fail, or every check built on it is void.
    use super::*;

    #[test]
    fn github_create_status_rules() {
        let spec = Spec::load("github");
        let op = spec
            .operation(
                "POST",
                "/repos/o/r/statuses/9f2c1bbd5e1dd2c0d2c5bfe1f6a0cbb0a3a9c6e1",
            )
            .unwrap();
        assert_eq!(op.id, "repos/create-commit-status");
        assert!(
            op.validate(
                &[],
                Some(&json!({"state":"success","context":"c","description":"d"}))
            )
            .is_ok()
        );
        assert!(
            op.validate(&[], Some(&json!({"state":"succeeded"}))).is_err(),
            "enum"
        );
        assert!(
            op.validate(&[], Some(&json!({"state":"success","extra":1})))
                .is_err(),
            "undeclared property"
        );
        assert!(
            op.validate(&[], Some(&json!({"context":"c"}))).is_err(),
            "required state"
        );
        assert!(op.validate(&[], None).is_err(), "body required");
        assert!(spec.operation("PUT", "/repos/o/r/statuses/abc").is_err());
        assert!(spec.operation("POST", "/repos/o/statuses/abc").is_err());
        let list = spec.operation("GET", "/repos/o/r/commits/abc/statuses").unwrap();
        assert!(list.validate(&[("per_page".into(), "100".into())], None).is_ok());
        assert!(list.validate(&[("per_page".into(), "101".into())], None).is_err());
        assert!(list.validate(&[("bogus".into(), "1".into())], None).is_err());
        assert!(op.example_response(201).is_some());
    }

    #[test]
    fn bitbucket_rules() {
        let cloud = Spec::load("bitbucket");
        let list = cloud
            .operation("GET", "/2.0/repositories/w/r/commit/abc/statuses")
            .unwrap();
        assert!(list.id.starts_with("get "), "{}", list.id);
        let q = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert!(list.validate(&q("pagelen", "100"), None).is_ok());
        assert!(list.validate(&q("pagelen", "101"), None).is_err());
        assert!(list.validate(&q("page", "0"), None).is_err());
        assert!(list.validate(&q("per_page", "10"), None).is_err());
        let dc = Spec::load("bitbucket-datacenter");
        let add = dc
            .operation("POST", "/rest/api/latest/projects/P/repos/r/commits/abc/builds")
            .unwrap();
        assert!(
            add.validate(&[], Some(&json!({"key": "k", "state": "FAILED"})))
                .is_err(),
            "url required"
        );
        assert!(
            add.validate(&[], Some(&json!({"key": "k", "state": "STOPPED", "url": "u"})))
                .is_err(),
            "enum"
        );
        assert!(
            add.validate(&[], Some(&json!({"key": "k", "state": "FAILED", "url": "u"})))
                .is_ok()
        );
        assert_eq!(
            dc.operation("GET", "/rest/build-status/1.0/commits/abc")
                .unwrap()
                .id,
            "getBuildStatus"
        );
    }
}
