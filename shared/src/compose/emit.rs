//! Renders resources as multi-document YAML in the exact bytes `kubectl kustomize` prints.
//!
//! kustomize turns each resource into JSON and then into YAML with go-yaml v2 (via
//! `sigs.k8s.io/yaml`). That pipeline fixes the format we reproduce here:
//! - mapping keys sorted with go-yaml's "natural" order (non-letters before letters, digit
//!   runs compared as numbers), sequences inside mappings not indented, two-space indent;
//! - numbers normalised by the JSON round trip (`1.0` prints as `1`);
//! - strings containing a newline as literal blocks (`|`, `|-`, `|+`, with an indentation
//!   indicator when they start with a space or newline); strings that would read back as
//!   another type (`"true"`, `"1.5"`, `"y"`, `"2001-12-14"`, `"1:20"`) double-quoted; strings
//!   that cannot be plain single-quoted, or double-quoted when they hold tabs or
//!   non-printable characters;
//! - plain and quoted scalars folded at spaces once a line passes 80 columns.
//!
//! The scalar writers follow the state machine of the libyaml emitter (which go-yaml ports)
//! closely, because folding depends on the exact column bookkeeping.

use serde_json::{Map, Value};
use std::cmp::Ordering;

/// go-yaml's preferred line width: scalars fold at the first space past this column.
const BEST_WIDTH: usize = 80;
/// go-yaml's indentation step.
const BEST_INDENT: usize = 2;

/// Renders resource bodies as `kubectl kustomize` does: one YAML document each, separated by
/// `---` lines, nothing at all for an empty list.
pub fn render_values<'a>(values: impl IntoIterator<Item = &'a Value>) -> String {
    let mut out = String::new();
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&render_document(v));
    }
    out
}

/// Renders one value as a YAML document (ending with a newline).
pub fn render_document(value: &Value) -> String {
    let mut e = Emitter::default();
    e.node(value, -1, Ctx::Root);
    // Document end: go-yaml writes an indent, i.e. a line break unless already at the start
    // of a fresh line.
    e.write_indent(0);
    e.out
}

#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Root,
    MappingValue,
    SequenceItem,
}

struct Emitter {
    out: String,
    column: usize,
    /// The last character written was whitespace (or nothing was written yet on this line).
    whitespace: bool,
    /// Only indentation has been written on the current line.
    indention: bool,
    /// The current indentation column for `write_indent`.
    indent: usize,
}

impl Default for Emitter {
    fn default() -> Self {
        Self {
            out: String::new(),
            column: 0,
            whitespace: true,
            indention: true,
            indent: 0,
        }
    }
}

enum Style {
    Plain,
    Single,
    Double,
    Literal,
}

impl Emitter {
    fn put(&mut self, c: char) {
        self.out.push(c);
        self.column += 1;
    }

    fn put_break(&mut self) {
        self.out.push('\n');
        self.column = 0;
        self.indention = true;
    }

    fn write_indent(&mut self, indent: usize) {
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.put_break();
        }
        while self.column < indent {
            self.put(' ');
        }
        self.whitespace = true;
    }

    fn write_indicator(
        &mut self,
        ind: &str,
        need_whitespace: bool,
        is_whitespace: bool,
        is_indention: bool,
    ) {
        if need_whitespace && !self.whitespace {
            self.put(' ');
        }
        for c in ind.chars() {
            self.put(c);
        }
        self.whitespace = is_whitespace;
        self.indention = self.indention && is_indention;
    }

    /// Emits `value`. `parent_indent` is the indentation of the enclosing collection (-1 at
    /// the root), mirroring go-yaml's indent stack.
    fn node(&mut self, value: &Value, parent_indent: isize, ctx: Ctx) {
        match value {
            Value::Object(map) if !map.is_empty() => self.mapping(map, parent_indent),
            Value::Array(items) if !items.is_empty() => {
                // A block sequence that is a mapping value is not indented ("indentless").
                let indentless = ctx == Ctx::MappingValue && !self.indention;
                let indent = if parent_indent < 0 {
                    0
                } else if indentless {
                    parent_indent as usize
                } else {
                    parent_indent as usize + BEST_INDENT
                };
                for item in items {
                    self.indent = indent;
                    self.write_indent(indent);
                    self.write_indicator("-", true, false, true);
                    self.node(item, indent as isize, Ctx::SequenceItem);
                }
            }
            Value::Object(_) => self.write_indicator("{}", true, false, false),
            Value::Array(_) => self.write_indicator("[]", true, false, false),
            scalar => {
                let indent = if parent_indent < 0 {
                    BEST_INDENT
                } else {
                    parent_indent as usize + BEST_INDENT
                };
                self.indent = indent;
                let (text, quoted_ok_plain) = scalar_text(scalar);
                self.scalar(&text, quoted_ok_plain, false);
            }
        }
    }

    fn mapping(&mut self, map: &Map<String, Value>, parent_indent: isize) {
        let indent = if parent_indent < 0 {
            0
        } else {
            parent_indent as usize + BEST_INDENT
        };
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort_by(|a, b| natural_cmp(a, b));
        for key in keys {
            self.indent = indent;
            self.write_indent(indent);
            // Keys are simple keys: never folded, never block scalars.
            self.scalar(key, is_plain_safe_string(key), true);
            self.write_indicator(":", false, false, false);
            self.node(&map[key.as_str()], indent as isize, Ctx::MappingValue);
        }
    }

    /// Writes a scalar. `plain_ok` says whether the text may be written without quotes as far
    /// as YAML typing goes (strings that look like numbers, booleans, ... may not).
    fn scalar(&mut self, text: &str, plain_ok: bool, simple_key: bool) {
        let a = analyze(text);
        let mut style = if text.contains('\n') && !simple_key {
            Style::Literal
        } else if plain_ok {
            Style::Plain
        } else {
            Style::Double
        };
        if simple_key && a.multiline {
            style = Style::Double;
        }
        if matches!(style, Style::Plain)
            && (!a.block_plain_allowed || (text.is_empty() && simple_key))
        {
            style = Style::Single;
        }
        if matches!(style, Style::Single) && !a.single_quoted_allowed {
            style = Style::Double;
        }
        if matches!(style, Style::Literal) && (!a.block_allowed || simple_key) {
            style = Style::Double;
        }
        let allow_breaks = !simple_key;
        match style {
            Style::Plain => self.write_plain(text, allow_breaks),
            Style::Single => self.write_single(text, allow_breaks),
            Style::Double => self.write_double(text, allow_breaks),
            Style::Literal => self.write_literal(text),
        }
    }

    fn write_plain(&mut self, value: &str, allow_breaks: bool) {
        let chars: Vec<char> = value.chars().collect();
        if !chars.is_empty() && !self.whitespace {
            self.put(' ');
        }
        self.write_flow_text(&chars, allow_breaks, false);
        if !chars.is_empty() {
            self.whitespace = false;
        }
        self.indention = false;
    }

    fn write_break(&mut self, c: char) {
        if c == '\n' {
            self.put_break();
        } else {
            self.out.push(c);
            self.column = 0;
            self.indention = true;
        }
    }

    fn write_single(&mut self, value: &str, allow_breaks: bool) {
        self.write_indicator("'", true, false, false);
        let chars: Vec<char> = value.chars().collect();
        self.write_flow_text(&chars, allow_breaks, true);
        self.write_indicator("'", false, false, false);
        self.whitespace = false;
        self.indention = false;
    }

    /// The text of a plain or single-quoted scalar: folded at a lone space past the best
    /// width, the first `\n` of a run of breaks doubled (a single one would read back as a
    /// space). `single_quoted` doubles `'` and never folds at the first or last character.
    fn write_flow_text(&mut self, chars: &[char], allow_breaks: bool, single_quoted: bool) {
        let n = chars.len();
        let mut spaces = false;
        let mut breaks = false;
        let mut i = 0;
        while i < n {
            let c = chars[i];
            if c == ' ' {
                if allow_breaks
                    && !spaces
                    && self.column > BEST_WIDTH
                    && (!single_quoted || (i > 0 && i + 1 < n))
                    && chars.get(i + 1) != Some(&' ')
                {
                    self.write_indent(self.indent);
                } else {
                    self.put(c);
                }
                spaces = true;
            } else if is_break(c) {
                if !breaks && c == '\n' {
                    self.put_break();
                }
                self.write_break(c);
                breaks = true;
            } else {
                if breaks {
                    self.write_indent(self.indent);
                }
                if single_quoted && c == '\'' {
                    self.put('\'');
                }
                self.put(c);
                self.indention = false;
                spaces = false;
                breaks = false;
            }
            i += 1;
        }
    }

    fn write_double(&mut self, value: &str, allow_breaks: bool) {
        self.write_indicator("\"", true, false, false);
        let chars: Vec<char> = value.chars().collect();
        let n = chars.len();
        let mut spaces = false;
        let mut i = 0;
        while i < n {
            let c = chars[i];
            if !is_printable(c) || c == '\u{FEFF}' || is_break(c) || c == '"' || c == '\\' {
                self.put('\\');
                match c {
                    '\0' => self.put('0'),
                    '\u{7}' => self.put('a'),
                    '\u{8}' => self.put('b'),
                    '\t' => self.put('t'),
                    '\n' => self.put('n'),
                    '\u{b}' => self.put('v'),
                    '\u{c}' => self.put('f'),
                    '\r' => self.put('r'),
                    '\u{1b}' => self.put('e'),
                    '"' => self.put('"'),
                    '\\' => self.put('\\'),
                    '\u{85}' => self.put('N'),
                    '\u{a0}' => self.put('_'),
                    '\u{2028}' => self.put('L'),
                    '\u{2029}' => self.put('P'),
                    _ => {
                        let v = c as u32;
                        let (ind, width) = if v <= 0xFF {
                            ('x', 2)
                        } else if v <= 0xFFFF {
                            ('u', 4)
                        } else {
                            ('U', 8)
                        };
                        self.put(ind);
                        for ch in format!("{v:0width$X}").chars() {
                            self.put(ch);
                        }
                    }
                }
                spaces = false;
            } else if c == ' ' {
                if allow_breaks && !spaces && self.column > BEST_WIDTH && i > 0 && i + 1 < n {
                    self.write_indent(self.indent);
                    if chars[i + 1] == ' ' {
                        self.put('\\');
                    }
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                self.put(c);
                spaces = false;
            }
            i += 1;
        }
        self.write_indicator("\"", false, false, false);
        self.whitespace = false;
        self.indention = false;
    }

    fn write_literal(&mut self, value: &str) {
        self.write_indicator("|", true, false, false);
        let chars: Vec<char> = value.chars().collect();
        if chars.first().is_some_and(|&c| c == ' ' || is_break(c)) {
            self.write_indicator(&BEST_INDENT.to_string(), false, false, false);
        }
        let chomp = match chars.as_slice() {
            [] => Some('-'),
            [.., last] if !is_break(*last) => Some('-'),
            [_] => Some('+'),
            [.., prev, _] if is_break(*prev) => Some('+'),
            _ => None,
        };
        if let Some(ch) = chomp {
            self.write_indicator(&ch.to_string(), false, false, false);
        }
        // go-yaml v2 breaks the line right after the header.
        self.put_break();
        self.whitespace = true;
        let mut breaks = true;
        for &c in &chars {
            if is_break(c) {
                self.write_break(c);
                breaks = true;
            } else {
                if breaks {
                    self.write_indent(self.indent);
                }
                self.put(c);
                self.indention = false;
                breaks = false;
            }
        }
    }
}

fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// libyaml's notion of printable (as go-yaml v2 implements it: characters outside the BMP
/// count as non-printable and get escaped).
fn is_printable(c: char) -> bool {
    matches!(c as u32, 0x0A | 0x20..=0x7E | 0xA0..=0xD7FF | 0xE000..=0xFFFD) && c != '\u{FEFF}'
}

struct Analysis {
    multiline: bool,
    block_plain_allowed: bool,
    single_quoted_allowed: bool,
    block_allowed: bool,
}

/// go-yaml's `yaml_emitter_analyze_scalar`, reduced to the block-context flags we need.
fn analyze(value: &str) -> Analysis {
    if value.is_empty() {
        return Analysis {
            multiline: false,
            block_plain_allowed: true,
            single_quoted_allowed: true,
            block_allowed: false,
        };
    }
    let chars: Vec<char> = value.chars().collect();
    let n = chars.len();
    let mut block_indicators = value.starts_with("---") || value.starts_with("...");
    let (mut line_breaks, mut special) = (false, false);
    let (mut leading_space, mut leading_break, mut trailing_space, mut trailing_break) =
        (false, false, false, false);
    let (mut break_space, mut space_break) = (false, false);
    let (mut preceded_by_ws, mut prev_space, mut prev_break) = (true, false, false);
    for i in 0..n {
        let c = chars[i];
        let followed_by_ws = i + 1 >= n || is_blank(chars[i + 1]);
        if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => block_indicators = true,
                '?' | ':' | '-' if followed_by_ws => block_indicators = true,
                _ => {}
            }
        } else {
            match c {
                ':' if followed_by_ws => block_indicators = true,
                '#' if preceded_by_ws => block_indicators = true,
                _ => {}
            }
        }
        if !is_printable(c) {
            special = true;
        }
        if c == ' ' {
            if i == 0 {
                leading_space = true;
            }
            if i + 1 == n {
                trailing_space = true;
            }
            if prev_break {
                break_space = true;
            }
            prev_space = true;
            prev_break = false;
        } else if is_break(c) {
            line_breaks = true;
            if i == 0 {
                leading_break = true;
            }
            if i + 1 == n {
                trailing_break = true;
            }
            if prev_space {
                space_break = true;
            }
            prev_space = false;
            prev_break = true;
        } else {
            prev_space = false;
            prev_break = false;
        }
        preceded_by_ws = is_blank(c) || is_break(c);
    }
    let mut a = Analysis {
        multiline: line_breaks,
        block_plain_allowed: true,
        single_quoted_allowed: true,
        block_allowed: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.block_plain_allowed = false;
    }
    if trailing_space {
        a.block_allowed = false;
    }
    if break_space {
        a.block_plain_allowed = false;
        a.single_quoted_allowed = false;
    }
    if space_break || special {
        a.block_plain_allowed = false;
        a.single_quoted_allowed = false;
        a.block_allowed = false;
    }
    if line_breaks || block_indicators {
        a.block_plain_allowed = false;
    }
    a
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The text of a non-collection value and whether it may be written plain.
fn scalar_text(v: &Value) -> (String, bool) {
    match v {
        Value::Null => ("null".to_owned(), true),
        Value::Bool(b) => (b.to_string(), true),
        Value::Number(n) => (format_number(n), true),
        Value::String(s) => (s.clone(), is_plain_safe_string(s)),
        Value::Array(_) | Value::Object(_) => (String::new(), true),
    }
}

/// How a number prints after kustomize's JSON round trip: integral values as integers,
/// others like Go's `strconv.FormatFloat(f, 'g', -1, 64)`.
fn format_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    if f.fract() == 0.0 && f.abs() < 9.2e18 {
        // JSON prints it without a fraction, so go-yaml reads it back as an integer.
        return (f as i64).to_string();
    }
    let sci = format!("{f:e}"); // shortest digits, e.g. "1.2345675e6"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    // Go switches to exponent form below 1e-4 and, for shortest formatting, from 1e6 up.
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{f}")
    }
}

/// Whether go-yaml would write this string unquoted as far as typing goes: it must not read
/// back as null, bool (YAML 1.1 spellings included), int, float or timestamp.
pub(crate) fn is_plain_safe_string(s: &str) -> bool {
    !(resolves_to_non_string(s) || is_base60_float(s))
}

fn resolves_to_non_string(s: &str) -> bool {
    const SPECIAL: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "n", "N", "no",
        "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF", "", "~", "null", "Null",
        "NULL", ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf",
        "-.Inf", "-.INF", "<<",
    ];
    let Some(first) = s.chars().next() else {
        return true;
    };
    match first {
        '+' | '-' | '0'..='9' => {
            if SPECIAL.contains(&s) || is_timestamp(s) {
                return true;
            }
            let plain: String = s.chars().filter(|&c| c != '_').collect();
            go_parse_int(&plain) || is_yaml_float(&plain) || is_binary(&plain)
        }
        'y' | 'Y' | 'n' | 'N' | 't' | 'T' | 'f' | 'F' | 'o' | 'O' | '~' | '<' => {
            SPECIAL.contains(&s)
        }
        '.' => SPECIAL.contains(&s) || is_yaml_float(s),
        _ => false,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)` / `ParseUint` acceptance (range ignored beyond u64).
fn go_parse_int(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (digits, radix) =
        if let Some(r) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            (r, 16)
        } else if let Some(r) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
            (r, 2)
        } else if let Some(r) = body.strip_prefix("0o").or_else(|| body.strip_prefix("0O")) {
            (r, 8)
        } else if body.len() > 1 && body.starts_with('0') {
            (&body[1..], 8)
        } else {
            (body, 10)
        };
    !digits.is_empty() && u64::from_str_radix(digits, radix).is_ok()
}

fn is_binary(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    body.strip_prefix("0b")
        .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c == '0' || c == '1'))
}

/// go-yaml's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.strip_prefix(['+', '-']).unwrap_or(s).as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.first() == Some(&b'.') {
        i = 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// go-yaml's base-60 float check (`1:20`), which it quotes for YAML 1.1 compatibility.
fn is_base60_float(s: &str) -> bool {
    let b = s.strip_prefix(['+', '-']).unwrap_or(s).as_bytes();
    if b.first().is_none_or(|c| !c.is_ascii_digit()) || !s.contains(':') {
        return false;
    }
    let (head, frac) = match s.find('.') {
        Some(p) => (&s[..p], Some(&s[p + 1..])),
        None => (s, None),
    };
    if frac.is_some_and(|f| !f.chars().all(|c| c.is_ascii_digit() || c == '_')) {
        return false;
    }
    let head = head.strip_prefix(['+', '-']).unwrap_or(head);
    let mut parts = head.split(':');
    let first = parts.next().unwrap_or("");
    if first.is_empty() || !first.chars().all(|c| c.is_ascii_digit() || c == '_') {
        return false;
    }
    let mut count = 0;
    for p in parts {
        count += 1;
        let ok = match p.as_bytes() {
            [d] => d.is_ascii_digit(),
            [a, d] => (b'0'..=b'5').contains(a) && d.is_ascii_digit(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    count > 0
}

/// go-yaml's timestamp detection: `YYYY-M-D`, optionally followed by a time.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 8 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return false;
    }
    let rest = &s[5..];
    let (month, rest) = split_digits(rest);
    let Some(rest) = rest.strip_prefix('-') else {
        return false;
    };
    let (day, rest) = split_digits(rest);
    let valid_date = matches!(month.len(), 1 | 2)
        && matches!(day.len(), 1 | 2)
        && (1..=12).contains(&month.parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&day.parse::<u32>().unwrap_or(0));
    if !valid_date {
        return false;
    }
    if rest.is_empty() {
        return true;
    }
    // A time part: "T15:04:05..." or " 15:04:05...". Go's parser validates more strictly;
    // anything of this shape is quoted either way, so we err towards quoting.
    let Some(time) = rest.strip_prefix(['T', 't', ' ']) else {
        return false;
    };
    let (h, t) = split_digits(time);
    !h.is_empty() && h.len() <= 2 && t.starts_with(':')
}

fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// go-yaml v2's ordering of string map keys: letters after non-letters, runs of digits
/// compared by value.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let ar: Vec<char> = a.chars().collect();
    let br: Vec<char> = b.chars().collect();
    let mut i = 0;
    while i < ar.len() && i < br.len() {
        if ar[i] == br[i] {
            i += 1;
            continue;
        }
        let al = ar[i].is_alphabetic();
        let bl = br[i].is_alphabetic();
        if al && bl {
            return ar[i].cmp(&br[i]);
        }
        if al || bl {
            return if bl {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let (mut an, mut bn) = (0i64, 0i64);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an
                .wrapping_mul(10)
                .wrapping_add(i64::from(ar[ai] as u8 - b'0'));
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn
                .wrapping_mul(10)
                .wrapping_add(i64::from(br[bi] as u8 - b'0'));
            bi += 1;
        }
        if an != bn {
            return an.cmp(&bn);
        }
        if ai != bi {
            return ai.cmp(&bi);
        }
        return ar[i].cmp(&br[i]);
    }
    ar.len().cmp(&br.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml_in: &str, expected: &str) {
        let v: Value = serde_yaml::from_str(yaml_in).expect("valid yaml");
        assert_eq!(render_document(&v), expected);
    }

    #[test]
    fn keys_sort_naturally_and_sequences_are_not_indented() {
        check(
            "b: 1\na10: x\na9: y\n_z: 1\nA: 2\nl: [1, {k: v, a: b}, []]\ne: {}\n",
            "_z: 1\nA: 2\na9: \"y\"\na10: x\nb: 1\ne: {}\nl:\n- 1\n- a: b\n  k: v\n- []\n",
        );
    }

    #[test]
    fn strings_that_read_back_as_other_types_are_double_quoted() {
        check(
            "a: 'true'\nb: '1.5'\nc: 'yes'\nd: ''\ne: '2001-12-14'\nf: '1:20'\ng: '0x1F'\nh: '~'\ni: plain text\n",
            "a: \"true\"\nb: \"1.5\"\nc: \"yes\"\nd: \"\"\ne: \"2001-12-14\"\nf: \"1:20\"\ng: \"0x1F\"\nh: \"~\"\ni: plain text\n",
        );
    }

    #[test]
    fn indicators_force_single_quotes_and_tabs_force_double_quotes() {
        check(
            "a: '#x'\nb: '- x'\nc: 'a: b'\nd: 'x\ty'\ne: ' lead'\nf: \"it's\"\ng: '---'\n",
            "a: '#x'\nb: '- x'\nc: 'a: b'\nd: \"x\\ty\"\ne: ' lead'\nf: it's\ng: '---'\n",
        );
    }

    #[test]
    fn multi_line_strings_become_literal_blocks_with_the_right_chomping() {
        check(
            "a: \"x\\ny\\n\"\nb: \"x\\ny\"\nc: \"x\\n\\n\"\nd: \"\\nlead\\n\"\nl:\n- \"p\\nq\\n\"\n",
            "a: |\n  x\n  y\nb: |-\n  x\n  y\nc: |+\n  x\n\nd: |2\n\n  lead\nl:\n- |\n  p\n  q\n",
        );
    }

    #[test]
    fn long_plain_scalars_fold_past_column_eighty() {
        let long = "word ".repeat(20);
        let long = long.trim_end();
        let out = render_document(&serde_json::json!({ "k": long }));
        assert_eq!(
            out,
            format!(
                "k: {}\n  {}\n",
                "word ".repeat(16).trim_end(),
                "word ".repeat(4).trim_end()
            )
        );
    }

    #[test]
    fn numbers_print_as_after_a_json_round_trip() {
        check(
            "a: 1.0\nb: 1.5\nc: 1.0e-7\nd: -3\ne: 1234567.5\n",
            "a: 1\nb: 1.5\nc: 1e-07\nd: -3\ne: 1.2345675e+06\n",
        );
    }
}
