//! Templates in string props: `{{event.attributes.x}}`, `{{entity.ref}}`, `{{entity.attributes.x}}`,
//! `{{settings.key}}` (see [`RuleContext::lookup`] for every path).
//!
//! A string that is exactly one template becomes the value it names, keeping its JSON type (so
//! `"{{event.attributes.qty}}"` renders to the number `3`); templates inside longer strings are interpolated as
//! text. A template naming a missing value is an error rather than an empty string, so a typo in a workflow
//! fails loudly instead of sending a webhook to `""`.

use serde_json::Value;

use super::{RuleContext, RuleError};

/// Renders every string inside `value` (recursively through arrays and objects).
pub fn render(value: &Value, ctx: &RuleContext<'_>) -> Result<Value, RuleError> {
    Ok(match value {
        Value::String(s) => render_str(s, ctx)?,
        Value::Array(a) => Value::Array(a.iter().map(|v| render(v, ctx)).collect::<Result<_, _>>()?),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, ctx)?)))
                .collect::<Result<_, RuleError>>()?,
        ),
        other => other.clone(),
    })
}

/// Renders one string.
pub fn render_str(s: &str, ctx: &RuleContext<'_>) -> Result<Value, RuleError> {
    if !s.contains("{{") {
        return Ok(Value::String(s.to_owned()));
    }
    let trimmed = s.trim();
    if let Some(inner) = trimmed.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
        if !inner.contains("{{") && !inner.contains("}}") {
            let path = inner.trim();
            return ctx.lookup(path).ok_or_else(|| RuleError::MissingValue(path.to_owned()));
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(RuleError::InvalidProps(format!("unclosed template in {s:?}")));
        };
        let path = after[..end].trim();
        match ctx.lookup(path) {
            Some(Value::String(v)) => out.push_str(&v),
            Some(v) => out.push_str(&v.to_string()),
            None => return Err(RuleError::MissingValue(path.to_owned())),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Fixture;
    use super::*;
    use serde_json::json;

    /// A lone template keeps its type; embedded ones interpolate; plain strings pass through.
    #[test]
    fn templates_render_values_and_text() {
        let f = Fixture::new();
        let c = f.ctx();
        assert_eq!(render_str("{{event.attributes.qty}}", &c).unwrap(), json!(3));
        assert_eq!(render_str(" {{ entity.ref }} ", &c).unwrap(), json!("O-1"));
        assert_eq!(
            render_str(
                "order {{entity.ref}} x{{event.attributes.qty}} to {{settings.erp_url}}",
                &c
            )
            .unwrap(),
            json!("order O-1 x3 to http://erp.example/hook")
        );
        assert_eq!(render_str("plain", &c).unwrap(), json!("plain"));
        assert_eq!(
            render(
                &json!({"a": ["{{entity.attributes.sku}}", 1], "b": {"c": "{{event.attributes.paid}}"}}),
                &c
            )
            .unwrap(),
            json!({"a": ["SKU-1", 1], "b": {"c": true}})
        );
    }

    /// A missing value or an unclosed template is an error naming it.
    #[test]
    fn missing_values_are_errors() {
        let f = Fixture::new();
        let c = f.ctx();
        assert_eq!(
            render_str("x {{event.attributes.nope}}", &c),
            Err(RuleError::MissingValue("event.attributes.nope".into()))
        );
        assert_eq!(
            render_str("{{settings.none}}", &c),
            Err(RuleError::MissingValue("settings.none".into()))
        );
        assert!(matches!(
            render_str("a {{entity.ref", &c),
            Err(RuleError::InvalidProps(_))
        ));
    }
}
