//! Dotted module paths (`encoder.layers.0.weight`) and glob patterns over them.

use crate::error::EmaError;

/// A glob over dotted parameter paths: `*` matches any run of characters (dots included),
/// `?` matches exactly one character, everything else matches itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PathPattern {
    pattern: Vec<char>,
}

impl PathPattern {
    /// Parses a pattern; an empty or blank one is an error (it would match nothing by accident).
    pub(crate) fn parse(pattern: &str) -> Result<Self, EmaError> {
        if pattern.trim().is_empty() {
            return Err(EmaError::InvalidPattern {
                pattern: pattern.to_string(),
                problem: "the pattern is empty".into(),
            });
        }
        Ok(Self {
            pattern: pattern.chars().collect(),
        })
    }

    /// Whether `path` matches the whole pattern.
    pub(crate) fn matches(&self, path: &str) -> bool {
        let text: Vec<char> = path.chars().collect();
        // Iterative glob matching with single-star backtracking: linear in practice.
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.pattern.get(p) {
                Some('*') => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(&c) if c == '?' || c == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        p = sp + 1;
                        t = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        self.pattern[p..].iter().all(|&c| c == '*')
    }
}

/// A set of patterns; a path is in the set when any pattern matches it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PathSet {
    patterns: Vec<PathPattern>,
}

impl PathSet {
    /// Parses every pattern.
    pub(crate) fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, EmaError> {
        let patterns = patterns
            .iter()
            .map(|p| PathPattern::parse(p.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Whether any pattern matches `path`.
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(path))
    }
}

/// The stack of module names a visitor or mapper is inside of.
#[derive(Clone, Debug, Default)]
pub(crate) struct PathStack {
    names: Vec<String>,
}

impl PathStack {
    pub(crate) fn enter(&mut self, name: &str) {
        self.names.push(name.to_string());
    }

    pub(crate) fn exit(&mut self) {
        self.names.pop();
    }

    /// The current dotted path.
    pub(crate) fn current(&self) -> String {
        self.names.join(".")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let p = |s| PathPattern::parse(s).unwrap();
        assert!(p("head.*").matches("head.weight"));
        assert!(p("head.*").matches("head.0.bias"));
        assert!(!p("head.*").matches("backbone.head.weight"));
        assert!(p("*.running_var").matches("blocks.1.bn.running_var"));
        assert!(p("fc.weigh?").matches("fc.weight"));
        assert!(!p("fc.weigh?").matches("fc.weights"));
        assert!(p("fc.weight").matches("fc.weight"));
        assert!(p("*").matches(""));
        assert!(p("a*b*c").matches("a.x.b.y.c"));
        assert!(!p("a*b*c").matches("a.x.b.y.d"));
        assert!(PathPattern::parse("  ").is_err());
    }
}
