//! Decoding that takes a JSON object, and only an object, where a struct is expected: serde's
//! derive also accepts an array there, filling the fields by position (`"dns": [["9.9.9.9"]]`
//! would set `nameservers`), which no CNI config means.
//!
//! A struct opts in with `#[serde(remote = "Self")]` on its derives (which makes them inherent
//! functions) and [`object_only!`], which implements the serde traits around them.

/// Implements `Deserialize` (and with `serialize`, `Serialize`) for a struct derived with
/// `#[serde(remote = "Self")]`, refusing anything but a map.
macro_rules! object_only {
    ($t:ty) => {
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                struct Object;
                impl<'de> serde::de::Visitor<'de> for Object {
                    type Value = $t;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a JSON object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> std::result::Result<$t, A::Error> {
                        <$t>::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    }
                }
                d.deserialize_map(Object)
            }
        }
    };
    ($t:ty, serialize) => {
        $crate::strict::object_only!($t);
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                <$t>::serialize(self, s)
            }
        }
    };
}

pub(crate) use object_only;
