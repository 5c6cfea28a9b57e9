//! Enums stored as text (a `text` column with a named CHECK, and the same spelling in JSON): one macro writes each
//! enum's spelling both ways, so a value and its text cannot drift apart, and every such enum reads the same.

/// Implements, for an enum declared beside it, `ALL` (every value in the order given), `as_str` (the database and
/// JSON spelling), `Display` (the same) and `FromStr` (its error names `$what`). A spelling may be followed by
/// aliases after `|`, accepted when parsing only.
macro_rules! text_enum {
    ($name:ident as $what:literal { $( $variant:ident = $text:literal $(| $alias:literal)* ),+ $(,)? }) => {
        impl $name {
            /// Every value, in lifecycle (declaration) order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The database and JSON spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                match s {
                    $($text $(| $alias)* => Ok($name::$variant),)+
                    other => Err(format!(concat!("unknown ", $what, " {:?}"), other)),
                }
            }
        }
    };
}
pub(crate) use text_enum;

#[cfg(test)]
mod tests {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Light {
        Red,
        Green,
    }
    text_enum!(Light as "light" { Red = "red" | "stop", Green = "green" });

    /// Each value's text parses back to it, an alias parses too, and anything else is refused by name.
    #[test]
    fn spelling_round_trips_and_unknown_text_is_refused() {
        for l in Light::ALL {
            assert_eq!(l.as_str().parse::<Light>(), Ok(*l));
            assert_eq!(l.to_string(), l.as_str());
        }
        assert_eq!("stop".parse::<Light>(), Ok(Light::Red));
        assert_eq!("blue".parse::<Light>(), Err("unknown light \"blue\"".to_owned()));
    }
}
