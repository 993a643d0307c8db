//! Which Postgres type renders how in JSON (SPEC §3 "Type mapping").
//!
//! pgoutput names each column's type by OID only. Builtin OIDs are fixed across every Postgres
//! version, so they are known without asking; anything else (domains, enums, extension types,
//! arrays of those) is looked up once in `pg_type` and cached for the life of the registry.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use tokio_postgres::{Client, SimpleQueryMessage};

/// How walhook renders a Postgres type in JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    /// `boolean`: JSON `true`/`false`.
    Bool,
    /// Integer types (`int2`, `int4`, `int8`, `oid`, `xid`, ...): JSON numbers.
    Integer,
    /// `float4`/`float8`: JSON numbers, NaN and infinities as strings.
    Float,
    /// `numeric`: a JSON string, so no precision is lost.
    Numeric,
    /// `json`/`jsonb`: the document embedded as JSON.
    Json,
    /// `timestamptz`: an RFC 3339 string in UTC.
    TimestampTz,
    /// `bytea`: standard padded base64.
    Bytea,
    /// An array of `element`, whose text form separates elements with `delimiter`.
    Array {
        /// How each element renders.
        element: Box<TypeKind>,
        /// The element type's `pg_type.typdelim` (`,` for all but `box`).
        delimiter: u8,
    },
    /// Everything else: the Postgres text form as a JSON string.
    Text,
}

/// Every builtin scalar type as (type OID, array type OID or 0, kind); OIDs from `pg_type.dat`.
///
/// Types not listed here (including the many fixed-OID types that render as text anyway) are
/// simply looked up in `pg_type` like user types, so a gap costs a query, not a wrong value.
const BUILTINS: &[(u32, u32, TypeKind)] = &[
    (16, 1000, TypeKind::Bool),          // bool
    (17, 1001, TypeKind::Bytea),         // bytea
    (18, 1002, TypeKind::Text),          // "char"
    (19, 1003, TypeKind::Text),          // name
    (20, 1016, TypeKind::Integer),       // int8
    (21, 1005, TypeKind::Integer),       // int2
    (22, 1006, TypeKind::Text),          // int2vector: space-separated, not array syntax
    (23, 1007, TypeKind::Integer),       // int4
    (24, 1008, TypeKind::Text),          // regproc: prints a name
    (25, 1009, TypeKind::Text),          // text
    (26, 1028, TypeKind::Integer),       // oid
    (27, 1010, TypeKind::Text),          // tid
    (28, 1011, TypeKind::Integer),       // xid
    (29, 1012, TypeKind::Integer),       // cid
    (30, 1013, TypeKind::Text),          // oidvector: space-separated, not array syntax
    (114, 199, TypeKind::Json),          // json
    (142, 143, TypeKind::Text),          // xml
    (194, 0, TypeKind::Text),            // pg_node_tree
    (600, 1017, TypeKind::Text),         // point
    (601, 1018, TypeKind::Text),         // lseg
    (602, 1019, TypeKind::Text),         // path
    (603, 1020, TypeKind::Text),         // box (its arrays use ';', see `delimiter_of`)
    (604, 1027, TypeKind::Text),         // polygon
    (628, 629, TypeKind::Text),          // line
    (650, 651, TypeKind::Text),          // cidr
    (700, 1021, TypeKind::Float),        // float4
    (701, 1022, TypeKind::Float),        // float8
    (705, 0, TypeKind::Text),            // unknown
    (718, 719, TypeKind::Text),          // circle
    (774, 775, TypeKind::Text),          // macaddr8
    (790, 791, TypeKind::Text),          // money: locale-formatted, not a plain number
    (829, 1040, TypeKind::Text),         // macaddr
    (869, 1041, TypeKind::Text),         // inet
    (1033, 1034, TypeKind::Text),        // aclitem
    (1042, 1014, TypeKind::Text),        // bpchar
    (1043, 1015, TypeKind::Text),        // varchar
    (1082, 1182, TypeKind::Text),        // date
    (1083, 1183, TypeKind::Text),        // time
    (1114, 1115, TypeKind::Text),        // timestamp
    (1184, 1185, TypeKind::TimestampTz), // timestamptz
    (1186, 1187, TypeKind::Text),        // interval
    (1266, 1270, TypeKind::Text),        // timetz
    (1560, 1561, TypeKind::Text),        // bit
    (1562, 1563, TypeKind::Text),        // varbit
    (1700, 1231, TypeKind::Numeric),     // numeric
    (1790, 2201, TypeKind::Text),        // refcursor
    (2202, 2207, TypeKind::Text),        // regprocedure
    (2203, 2208, TypeKind::Text),        // regoper
    (2204, 2209, TypeKind::Text),        // regoperator
    (2205, 2210, TypeKind::Text),        // regclass
    (2206, 2211, TypeKind::Text),        // regtype
    (2249, 2287, TypeKind::Text),        // record
    (2275, 1263, TypeKind::Text),        // cstring
    (2950, 2951, TypeKind::Text),        // uuid
    (2970, 2949, TypeKind::Text),        // txid_snapshot
    (3220, 3221, TypeKind::Text),        // pg_lsn
    (3614, 3643, TypeKind::Text),        // tsvector
    (3615, 3645, TypeKind::Text),        // tsquery
    (3642, 3644, TypeKind::Text),        // gtsvector
    (3734, 3735, TypeKind::Text),        // regconfig
    (3769, 3770, TypeKind::Text),        // regdictionary
    (3802, 3807, TypeKind::Json),        // jsonb
    (3904, 3905, TypeKind::Text),        // int4range
    (3906, 3907, TypeKind::Text),        // numrange
    (3908, 3909, TypeKind::Text),        // tsrange
    (3910, 3911, TypeKind::Text),        // tstzrange
    (3912, 3913, TypeKind::Text),        // daterange
    (3926, 3927, TypeKind::Text),        // int8range
    (4072, 4073, TypeKind::Text),        // jsonpath
    (4089, 4090, TypeKind::Text),        // regnamespace
    (4096, 4097, TypeKind::Text),        // regrole
    (4191, 4192, TypeKind::Text),        // regcollation
    (4451, 6150, TypeKind::Text),        // int4multirange
    (4532, 6151, TypeKind::Text),        // nummultirange
    (4533, 6152, TypeKind::Text),        // tsmultirange
    (4534, 6153, TypeKind::Text),        // tstzmultirange
    (4535, 6155, TypeKind::Text),        // datemultirange
    (4536, 6157, TypeKind::Text),        // int8multirange
    (5038, 5039, TypeKind::Text),        // pg_snapshot
    (5069, 271, TypeKind::Integer),      // xid8
];

/// OID of `box`, the one builtin whose `typdelim` is `;` rather than `,`.
const BOX_OID: u32 = 603;

/// Element delimiter of arrays of a builtin type.
fn delimiter_of(element_oid: u32) -> u8 {
    if element_oid == BOX_OID {
        b';'
    } else {
        b','
    }
}

/// oid → kind for the builtin types and their array types; `None` for any other OID.
///
/// Scans a table: meant for setting up a [`TypeRegistry`], not for the per-column hot path.
pub fn builtin_kind(oid: u32) -> Option<TypeKind> {
    BUILTINS.iter().find_map(|(scalar, array, kind)| {
        if *scalar == oid {
            Some(kind.clone())
        } else if *array == oid && *array != 0 {
            Some(TypeKind::Array {
                element: Box::new(kind.clone()),
                delimiter: delimiter_of(*scalar),
            })
        } else {
            None
        }
    })
}

/// What `kind` answers for an OID it does not know.
static TEXT: TypeKind = TypeKind::Text;

/// A hasher for OID keys: one multiply instead of SipHash, since `kind` runs per column.
///
/// OIDs come from the database we watch, not from an attacker choosing hash collisions.
#[derive(Default)]
struct OidHasher(u64);

impl Hasher for OidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        // Fibonacci hashing: spreads consecutive OIDs over the high bits the table probes with.
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type OidMap<V> = HashMap<u32, V, BuildHasherDefault<OidHasher>>;

/// A `pg_type` lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum TypeLookupError {
    /// The query itself failed (connection lost, permission denied, ...).
    #[error("could not look up column types in pg_type: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// The server answered with a row walhook cannot read; a bug or a very unusual server.
    #[error("unexpected row from pg_type while looking up column types: {0}")]
    UnexpectedRow(String),
}

/// Cache of type kinds, builtins plus user-defined types looked up in pg_type.
#[derive(Debug, Clone)]
pub struct TypeRegistry {
    kinds: OidMap<TypeKind>,
}

impl Default for TypeRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// One row of `pg_type`, as much of it as decides the kind.
#[derive(Debug, Clone, Copy)]
struct PgType {
    typtype: u8,
    typbasetype: u32,
    typelem: u32,
    typdelim: u8,
    typcategory: u8,
    typlen: i16,
}

/// Domains over domains nest; Postgres forbids cycles, this bounds the walk should one appear.
const MAX_TYPE_DEPTH: usize = 32;

impl TypeRegistry {
    /// A registry that knows the builtin types.
    pub fn new() -> Self {
        let mut kinds = OidMap::default();
        for (scalar, array, _) in BUILTINS {
            for oid in [*scalar, *array] {
                if oid != 0 {
                    kinds.insert(oid, builtin_kind(oid).expect("listed in BUILTINS"));
                }
            }
        }
        TypeRegistry { kinds }
    }

    /// Kind of a type; unknown oids (not yet resolved) render as Text.
    #[inline]
    pub fn kind(&self, oid: u32) -> &TypeKind {
        self.kinds.get(&oid).unwrap_or(&TEXT)
    }

    /// Whether `oid` is builtin or already resolved, i.e. `kind` answers from knowledge.
    pub fn is_known(&self, oid: u32) -> bool {
        self.kinds.contains_key(&oid)
    }

    /// Looks up every oid not yet known in pg_type (domains → base type recursively, arrays →
    /// element + typdelim, enums/ranges/composites/base extension types → Text), in one query.
    ///
    /// An OID that `pg_type` does not have is remembered as Text, so it is not asked again.
    pub async fn resolve(&mut self, client: &Client, oids: &[u32]) -> Result<(), TypeLookupError> {
        let mut wanted: Vec<u32> = oids
            .iter()
            .copied()
            .filter(|o| !self.is_known(*o))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable();
        wanted.dedup();

        let messages = client.simple_query(&lookup_sql(&wanted)).await?;
        let mut rows = OidMap::default();
        for message in &messages {
            if let SimpleQueryMessage::Row(row) = message {
                let cols: Vec<Option<&str>> = (0..row.len()).map(|i| row.get(i)).collect();
                let (oid, ty) = parse_row(&cols)
                    .ok_or_else(|| TypeLookupError::UnexpectedRow(format!("{cols:?}")))?;
                rows.insert(oid, ty);
            }
        }
        self.learn(&wanted, &rows);
        Ok(())
    }

    /// Records the kinds of `wanted` (and of every type they lead to) from fetched rows.
    fn learn(&mut self, wanted: &[u32], rows: &OidMap<PgType>) {
        for &oid in wanted {
            let kind = self.kind_from_rows(oid, rows, 0);
            self.kinds.insert(oid, kind);
        }
    }

    /// Works out the kind of `oid` from what is known plus fetched `pg_type` rows.
    fn kind_from_rows(&mut self, oid: u32, rows: &OidMap<PgType>, depth: usize) -> TypeKind {
        if let Some(kind) = self.kinds.get(&oid) {
            return kind.clone();
        }
        let Some(ty) = rows.get(&oid) else {
            return TypeKind::Text;
        };
        if depth >= MAX_TYPE_DEPTH {
            return TypeKind::Text;
        }
        let kind = match ty.typtype {
            b'd' if ty.typbasetype != 0 => self.kind_from_rows(ty.typbasetype, rows, depth + 1),
            // True arrays are varlena; fixed-length types with a typelem (point, name) are not.
            b'b' if ty.typcategory == b'A' && ty.typelem != 0 && ty.typlen == -1 => {
                let element = self.kind_from_rows(ty.typelem, rows, depth + 1);
                // array_out separates elements with the *element* type's typdelim.
                let delimiter = match rows.get(&ty.typelem) {
                    Some(elem) => elem.typdelim,
                    None => delimiter_of(ty.typelem),
                };
                TypeKind::Array {
                    element: Box::new(element),
                    delimiter,
                }
            }
            // Enums, ranges, multiranges, composites, pseudo-types and extension base types.
            _ => TypeKind::Text,
        };
        self.kinds.insert(oid, kind.clone());
        kind
    }
}

/// The one query that fetches the requested types plus every base and element type they lead
/// to, so domains over arrays of domains resolve without further round trips.
///
/// Uses the simple query protocol with the OIDs inlined (they are integers, nothing to
/// escape) because a `replication=database` connection accepts only simple queries.
fn lookup_sql(oids: &[u32]) -> String {
    let list = oids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "WITH RECURSIVE wanted(oid) AS ( \
             SELECT unnest('{{{list}}}'::oid[]) \
           UNION \
             SELECT next.oid FROM pg_catalog.pg_type t JOIN wanted w ON t.oid = w.oid \
             CROSS JOIN LATERAL (VALUES (t.typbasetype), (t.typelem)) AS next(oid) \
             WHERE next.oid <> 0 \
         ) \
         SELECT t.oid, t.typtype, t.typbasetype, t.typelem, t.typdelim, t.typcategory, t.typlen \
         FROM pg_catalog.pg_type t JOIN wanted w ON t.oid = w.oid"
    )
}

/// Reads one text-format row of [`lookup_sql`].
fn parse_row(cols: &[Option<&str>]) -> Option<(u32, PgType)> {
    let [oid, typtype, base, elem, delim, category, typlen] = cols else {
        return None;
    };
    // "char" columns print as one character (or a backslash escape for bytes outside ASCII).
    let one_char = |s: &Option<&str>| match s.map(str::as_bytes) {
        Some([c]) => Some(*c),
        _ => None,
    };
    Some((
        oid.as_ref()?.parse().ok()?,
        PgType {
            typtype: one_char(typtype)?,
            typbasetype: base.as_ref()?.parse().ok()?,
            typelem: elem.as_ref()?.parse().ok()?,
            typdelim: one_char(delim).unwrap_or(b','),
            typcategory: one_char(category)?,
            typlen: typlen.as_ref()?.parse().ok()?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array_of(element: TypeKind) -> TypeKind {
        TypeKind::Array {
            element: Box::new(element),
            delimiter: b',',
        }
    }

    #[test]
    fn builtin_scalars_and_arrays() {
        assert_eq!(builtin_kind(23), Some(TypeKind::Integer));
        assert_eq!(builtin_kind(16), Some(TypeKind::Bool));
        assert_eq!(builtin_kind(701), Some(TypeKind::Float));
        assert_eq!(builtin_kind(1700), Some(TypeKind::Numeric));
        assert_eq!(builtin_kind(3802), Some(TypeKind::Json));
        assert_eq!(builtin_kind(1184), Some(TypeKind::TimestampTz));
        assert_eq!(builtin_kind(17), Some(TypeKind::Bytea));
        assert_eq!(builtin_kind(2950), Some(TypeKind::Text));
        assert_eq!(builtin_kind(1007), Some(array_of(TypeKind::Integer)));
        assert_eq!(builtin_kind(1009), Some(array_of(TypeKind::Text)));
        assert_eq!(builtin_kind(1015), Some(array_of(TypeKind::Text)));
        assert_eq!(builtin_kind(3807), Some(array_of(TypeKind::Json)));
        assert_eq!(builtin_kind(1185), Some(array_of(TypeKind::TimestampTz)));
        assert_eq!(builtin_kind(1001), Some(array_of(TypeKind::Bytea)));
        assert_eq!(builtin_kind(1231), Some(array_of(TypeKind::Numeric)));
        assert_eq!(builtin_kind(271), Some(array_of(TypeKind::Integer)));
        assert_eq!(
            builtin_kind(1020),
            Some(TypeKind::Array {
                element: Box::new(TypeKind::Text),
                delimiter: b';'
            })
        );
        assert_eq!(builtin_kind(0), None);
        assert_eq!(builtin_kind(16_384), None);
    }

    #[test]
    fn builtin_oids_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for (scalar, array, _) in BUILTINS {
            assert!(seen.insert(*scalar), "duplicate {scalar}");
            assert!(*array == 0 || seen.insert(*array), "duplicate {array}");
        }
    }

    #[test]
    fn registry_answers_builtins_and_text_for_unknown() {
        let reg = TypeRegistry::new();
        assert_eq!(reg.kind(20), &TypeKind::Integer);
        assert_eq!(reg.kind(1016), &array_of(TypeKind::Integer));
        assert_eq!(reg.kind(99_999), &TypeKind::Text);
        assert!(reg.is_known(25));
        assert!(!reg.is_known(99_999));
    }

    fn row(typtype: u8, base: u32, elem: u32, delim: u8, category: u8, typlen: i16) -> PgType {
        PgType {
            typtype,
            typbasetype: base,
            typelem: elem,
            typdelim: delim,
            typcategory: category,
            typlen,
        }
    }

    #[test]
    fn learns_domains_arrays_enums_and_missing_types() {
        let mut rows = OidMap::default();
        // domain money_cents over int8; domain over that domain; array of the outer domain.
        rows.insert(50_000, row(b'd', 20, 0, b',', b'N', 8));
        rows.insert(50_001, row(b'd', 50_000, 0, b',', b'N', 8));
        rows.insert(50_002, row(b'b', 0, 50_001, b',', b'A', -1));
        // an enum and its array
        rows.insert(50_010, row(b'e', 0, 0, b',', b'E', 4));
        rows.insert(50_011, row(b'b', 0, 50_010, b',', b'A', -1));
        // a domain over box[]; an extension type with ';' delimiter and its array
        rows.insert(50_020, row(b'd', 1020, 0, b';', b'A', -1));
        rows.insert(50_030, row(b'b', 0, 0, b';', b'U', -1));
        rows.insert(50_031, row(b'b', 0, 50_030, b',', b'A', -1));
        // a fixed-length base type with a typelem, like point: not an array
        rows.insert(50_040, row(b'b', 0, 701, b',', b'G', 16));
        // a composite
        rows.insert(50_050, row(b'c', 0, 0, b',', b'C', -1));

        let mut reg = TypeRegistry::new();
        let wanted = [
            50_001, 50_002, 50_011, 50_020, 50_031, 50_040, 50_050, 50_099,
        ];
        reg.learn(&wanted, &rows);

        assert_eq!(reg.kind(50_001), &TypeKind::Integer);
        assert_eq!(reg.kind(50_000), &TypeKind::Integer, "intermediate cached");
        assert_eq!(reg.kind(50_002), &array_of(TypeKind::Integer));
        assert_eq!(reg.kind(50_011), &array_of(TypeKind::Text));
        assert_eq!(reg.kind(50_020), &builtin_kind(1020).unwrap());
        assert_eq!(
            reg.kind(50_031),
            &TypeKind::Array {
                element: Box::new(TypeKind::Text),
                delimiter: b';'
            }
        );
        assert_eq!(reg.kind(50_040), &TypeKind::Text);
        assert_eq!(reg.kind(50_050), &TypeKind::Text);
        assert!(reg.is_known(50_099), "missing oid cached as Text");
        assert_eq!(reg.kind(50_099), &TypeKind::Text);
    }

    #[test]
    fn cyclic_domains_do_not_loop() {
        let mut rows = OidMap::default();
        rows.insert(60_000, row(b'd', 60_001, 0, b',', b'N', 4));
        rows.insert(60_001, row(b'd', 60_000, 0, b',', b'N', 4));
        let mut reg = TypeRegistry::new();
        reg.learn(&[60_000], &rows);
        assert_eq!(reg.kind(60_000), &TypeKind::Text);
    }

    #[test]
    fn parses_text_rows() {
        let cols = [
            Some("16385"),
            Some("b"),
            Some("0"),
            Some("603"),
            Some(";"),
            Some("A"),
            Some("-1"),
        ];
        let (oid, ty) = parse_row(&cols).unwrap();
        assert_eq!(oid, 16_385);
        assert_eq!((ty.typtype, ty.typelem, ty.typdelim), (b'b', 603, b';'));
        assert_eq!((ty.typcategory, ty.typlen), (b'A', -1));
        assert!(parse_row(&cols[..6]).is_none());
        let mut bad = cols;
        bad[0] = Some("x");
        assert!(parse_row(&bad).is_none());
    }

    #[test]
    fn lookup_sql_inlines_oids() {
        let sql = lookup_sql(&[16_385, 16_390]);
        assert!(sql.contains("'{16385,16390}'::oid[]"), "{sql}");
    }

    /// Checks the builtin table and `resolve` against a live server.
    /// Runs against a throw-away cluster.
    #[tokio::test]
    async fn against_postgres() {
        let conninfo = crate::ephemeral::unit_test_database();
        let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);

        // Every builtin array OID is really the array of its scalar, with the right delimiter.
        for (scalar, array, _) in BUILTINS {
            let row = client
                .query_one(
                    "SELECT typarray, typdelim FROM pg_type WHERE oid = $1",
                    &[scalar],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, u32>(0), *array, "typarray of {scalar}");
            assert_eq!(row.get::<_, i8>(1) as u8, delimiter_of(*scalar), "{scalar}");
        }

        client
            .batch_execute(
                "DROP SCHEMA IF EXISTS walhook_types_test CASCADE;
                 CREATE SCHEMA walhook_types_test;
                 SET search_path = walhook_types_test;
                 CREATE DOMAIN cents AS int8;
                 CREATE DOMAIN positive_cents AS cents CHECK (VALUE > 0);
                 CREATE DOMAIN boxes AS box[];
                 CREATE TYPE mood AS ENUM ('happy', 'sad');
                 CREATE TYPE pair AS (a int, b text);",
            )
            .await
            .unwrap();
        let oid_of = |name: &'static str| {
            let client = &client;
            async move {
                client
                    .query_one(&format!("SELECT '{name}'::regtype::oid"), &[])
                    .await
                    .unwrap()
                    .get::<_, u32>(0)
            }
        };
        let names = [
            "positive_cents",
            "positive_cents[]",
            "boxes",
            "mood",
            "mood[]",
            "pair",
            "pair[]",
            "information_schema.cardinal_number",
        ];
        let mut oids = Vec::new();
        for name in names {
            oids.push(oid_of(name).await);
        }
        oids.push(4_000_000_000); // no such type

        let mut reg = TypeRegistry::new();
        reg.resolve(&client, &oids).await.unwrap();
        let kinds: Vec<&TypeKind> = oids.iter().map(|o| reg.kind(*o)).collect();
        assert_eq!(kinds[0], &TypeKind::Integer);
        assert_eq!(kinds[1], &array_of(TypeKind::Integer));
        assert_eq!(kinds[2], &builtin_kind(1020).unwrap());
        assert_eq!(kinds[3], &TypeKind::Text);
        assert_eq!(kinds[4], &array_of(TypeKind::Text));
        assert_eq!(kinds[5], &TypeKind::Text);
        assert_eq!(kinds[6], &array_of(TypeKind::Text));
        assert_eq!(kinds[7], &TypeKind::Integer);
        assert!(reg.is_known(4_000_000_000));
        client
            .batch_execute("DROP SCHEMA walhook_types_test CASCADE")
            .await
            .unwrap();
    }
}
