//! Templates of the HTTP backend: `${NAME}` from the environment (resolved once),
//! `{key}` and `{password}` per request, each encoded for where it goes.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::SpecError;

/// Everything but RFC 3986's unreserved characters and `@` is encoded: the key is
/// one path segment (or query value) whatever it holds, `/`, `?`, `#`, `%`, `&`,
/// `+` included. `@` stays as it is, as in the userli backend's URLs (it is
/// allowed in a path segment and means nothing in a query value).
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@');

/// Where the environment comes from: the variable's value, if set.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// `text` with every `${NAME}` replaced by the variable `NAME`, or by the contents
/// of the file `NAME_FILE` names (trailing line break removed); `field` names the
/// setting in errors. Also says whether anything was replaced (a header that took
/// a variable is treated as a secret).
pub(crate) fn expand_env(
    text: &str,
    env: Env<'_>,
    field: &str,
) -> Result<(String, bool), SpecError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut replaced = false;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| SpecError::new(field, "`${` without a closing `}`"))?;
        let name = &after[..end];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(SpecError::new(
                field,
                format!("`${{{name}}}`: a variable name is upper-case letters, digits and `_`"),
            ));
        }
        out.push_str(&variable(name, env, field)?);
        replaced = true;
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, replaced))
}

fn variable(name: &str, env: Env<'_>, field: &str) -> Result<String, SpecError> {
    if let Some(value) = env(name).filter(|v| !v.is_empty()) {
        return Ok(value);
    }
    let file_var = format!("{name}_FILE");
    let Some(path) = env(&file_var).filter(|v| !v.is_empty()) else {
        return Err(SpecError::new(
            field,
            format!("`${{{name}}}`: neither {name} nor {file_var} is set"),
        ));
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| SpecError::new(field, format!("`${{{name}}}`: {file_var}={path}: {e}")))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// A URL with `{key}` placeholders.
#[derive(Debug, Clone)]
pub(crate) struct UrlTemplate {
    parts: Vec<String>,
}

impl UrlTemplate {
    /// Parses `text` (environment already expanded) and proves it renders to an
    /// `http`/`https` URL.
    /// Repeated slashes in the path are collapsed, so that a base URL from the
    /// environment works with or without its trailing slash.
    pub(crate) fn parse(text: &str, field: &str) -> Result<Self, SpecError> {
        let text = match text.split_once("://") {
            Some((scheme, rest)) => {
                // The path only: a query (`?next=https://…`) keeps its slashes.
                let (path, query) = match rest.find('?') {
                    Some(at) => rest.split_at(at),
                    None => (rest, ""),
                };
                let mut path = path.to_owned();
                while path.contains("//") {
                    path = path.replace("//", "/");
                }
                format!("{scheme}://{path}{query}")
            }
            None => text.to_owned(),
        };
        let parts: Vec<String> = text.split("{key}").map(str::to_owned).collect();
        let template = Self { parts };
        let sample = template
            .render("user@example.org")
            .map_err(|e| SpecError::new(field, e))?;
        let url = url::Url::parse(&sample)
            .map_err(|e| SpecError::new(field, format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(SpecError::new(
                field,
                "must be an http:// or https:// URL with a host",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SpecError::new(
                field,
                "must not carry credentials: put them in a header",
            ));
        }
        Ok(template)
    }

    /// The URL for `key`, the key percent-encoded.
    pub(crate) fn render(&self, key: &str) -> Result<String, String> {
        // The URL library drops `.` and `..` segments and an empty key hits another
        // route: such a request must never be sent.
        if matches!(key, "" | "." | "..") && self.parts.len() > 1 {
            return Err("key cannot be sent in a URL".to_owned());
        }
        let encoded = utf8_percent_encode(key, KEY_ENCODE).to_string();
        Ok(self.parts.join(&encoded))
    }
}

/// A JSON body with `{key}` and `{password}` placeholders, each replaced by a JSON
/// string.
#[derive(Debug, Clone)]
pub(crate) struct BodyTemplate {
    parts: Vec<BodyPart>,
}

/// A piece of a body template.
#[derive(Debug, Clone)]
enum BodyPart {
    Text(String),
    Key,
    Password,
}

impl BodyTemplate {
    /// Parses `text` (environment already expanded) and proves it is JSON once the
    /// placeholders are filled.
    pub(crate) fn parse(text: &str, field: &str) -> Result<Self, SpecError> {
        // Split once, here: filling in one pass means a login spelt `{password}`
        // stays a login and never brings the password into another field.
        let mut parts = Vec::new();
        let mut rest = text;
        loop {
            let next = [("{key}", BodyPart::Key), ("{password}", BodyPart::Password)]
                .into_iter()
                .filter_map(|(token, part)| rest.find(token).map(|at| (at, token.len(), part)))
                .min_by_key(|(at, _, _)| *at);
            let Some((at, len, part)) = next else {
                parts.push(BodyPart::Text(rest.to_owned()));
                break;
            };
            parts.push(BodyPart::Text(rest[..at].to_owned()));
            parts.push(part);
            rest = &rest[at + len..];
        }
        let template = Self { parts };
        serde_json::from_str::<serde_json::Value>(&template.render("k", "p"))
            .map_err(|e| SpecError::new(field, format!("not JSON once filled in: {e}")))?;
        Ok(template)
    }

    /// The body for `key` and `password`.
    pub(crate) fn render(&self, key: &str, password: &str) -> String {
        let json = |s: &str| serde_json::Value::from(s).to_string();
        self.parts
            .iter()
            .map(|part| match part {
                BodyPart::Text(text) => text.clone(),
                BodyPart::Key => json(key),
                BodyPart::Password => json(password),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn variables_come_from_the_environment_or_a_file() {
        let dir = std::env::temp_dir().join(format!("http-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("token");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let secret_path = secret.to_str().unwrap().to_owned();
        let e = env(&[("BASE", "http://api.example"), ("TOKEN_FILE", &secret_path)]);
        assert_eq!(
            expand_env("${BASE}/x", &e, "f").unwrap(),
            ("http://api.example/x".to_owned(), true)
        );
        assert_eq!(
            expand_env("Bearer ${TOKEN}", &e, "f").unwrap().0,
            "Bearer s3cret"
        );
        assert_eq!(
            expand_env("plain", &e, "f").unwrap(),
            ("plain".into(), false)
        );
        let err = expand_env("${MISSING}", &e, "http.headers").unwrap_err();
        assert!(err.to_string().starts_with("http.headers: "), "{err}");
        assert!(err.to_string().contains("MISSING_FILE"), "{err}");
        assert!(expand_env("${lower}", &e, "f").is_err());
        assert!(expand_env("${OPEN", &e, "f").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn keys_are_one_percent_encoded_segment() {
        let t = UrlTemplate::parse("http://h/api/{key}", "f").unwrap();
        assert_eq!(
            t.render("user@example.org").unwrap(),
            "http://h/api/user@example.org"
        );
        assert_eq!(
            t.render("a/b?c#d%e f").unwrap(),
            "http://h/api/a%2Fb%3Fc%23d%25e%20f"
        );
        assert_eq!(
            t.render("exämple.org").unwrap(),
            "http://h/api/ex%C3%A4mple.org"
        );
        assert!(t.render("..").is_err());
        assert!(t.render("").is_err());
        let slashes = UrlTemplate::parse("http://h/base//api/{key}", "f").unwrap();
        assert_eq!(slashes.render("k").unwrap(), "http://h/base/api/k");
        let query = UrlTemplate::parse("http://h//a?next=https://x//y&k={key}", "f").unwrap();
        assert_eq!(
            query.render("k").unwrap(),
            "http://h/a?next=https://x//y&k=k"
        );
        assert!(UrlTemplate::parse("ftp://h/{key}", "f").is_err());
        assert!(UrlTemplate::parse("http://u:p@h/{key}", "f").is_err());
        assert!(UrlTemplate::parse("not a url {key}", "f").is_err());
    }

    #[test]
    fn bodies_take_json_strings() {
        let t = BodyTemplate::parse(r#"{"email": {key}, "password": {password}}"#, "f").unwrap();
        let body: serde_json::Value =
            serde_json::from_str(&t.render("u@x", "pa\"ss\\ wörd\n")).unwrap();
        assert_eq!(body["email"], "u@x");
        assert_eq!(body["password"], "pa\"ss\\ wörd\n");
        assert!(BodyTemplate::parse(r#"{"email": "{key}"}"#, "f").is_err());
        // A login spelt like a placeholder stays the login.
        let body: serde_json::Value =
            serde_json::from_str(&t.render("{password}@x.org", "s3cret")).unwrap();
        assert_eq!(body["email"], "{password}@x.org");
        assert!(!body["email"].to_string().contains("s3cret"));
    }
}
