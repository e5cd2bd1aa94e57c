//! [`List`]: a repeated field of a message (column values, format codes, type
//! OIDs, field descriptions, error fields, startup parameters, …), read lazily
//! from the wire without allocating, or built from a slice for encoding.

use std::fmt;

use crate::body::{BodyReader, MessageWriter};
use crate::error::{DecodeError, EncodeError, Tag};
use crate::format::{Format, Oid};

/// One item of a [`List`]: how it is read from and written to a message body.
///
/// Implemented for the item types of this crate's messages only (sealed).
pub trait ListItem<'a>: Copy + sealed::Sealed {
    /// Reads one item; `field` names the list for error context.
    #[doc(hidden)]
    fn read(r: &mut BodyReader<'a>, field: &'static str) -> Result<Self, DecodeError>;
    /// Appends one item.
    #[doc(hidden)]
    fn write(&self, w: &mut MessageWriter<'_>, field: &'static str) -> Result<(), EncodeError>;
}

mod sealed {
    pub trait Sealed {}
}

/// A repeated message field.
///
/// Decoded lists borrow the validated wire bytes and parse items as they are
/// iterated (no allocation, no copy); lists to encode are built from a slice
/// with `List::from(&items[..])`. Two lists are equal when their items are.
#[derive(Clone, Copy)]
pub struct List<'a, T> {
    repr: Repr<'a, T>,
}

#[derive(Clone, Copy)]
enum Repr<'a, T> {
    /// Validated wire bytes holding exactly `len` items.
    Wire {
        tag: Tag,
        field: &'static str,
        bytes: &'a [u8],
        len: usize,
    },
    Items(&'a [T]),
}

impl<'a, T> From<&'a [T]> for List<'a, T> {
    fn from(items: &'a [T]) -> Self {
        List {
            repr: Repr::Items(items),
        }
    }
}

impl<'a, T, const N: usize> From<&'a [T; N]> for List<'a, T> {
    fn from(items: &'a [T; N]) -> Self {
        List {
            repr: Repr::Items(items),
        }
    }
}

impl<T> Default for List<'_, T> {
    fn default() -> Self {
        List {
            repr: Repr::Items(&[]),
        }
    }
}

impl<'a, T: ListItem<'a>> List<'a, T> {
    /// Number of items.
    pub fn len(&self) -> usize {
        match self.repr {
            Repr::Wire { len, .. } => len,
            Repr::Items(items) => items.len(),
        }
    }

    /// True when the list has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items in order.
    pub fn iter(&self) -> ListIter<'a, T> {
        ListIter {
            repr: match self.repr {
                Repr::Wire {
                    tag,
                    field,
                    bytes,
                    len,
                } => IterRepr::Wire {
                    reader: BodyReader::new(tag, bytes),
                    field,
                    left: len,
                },
                Repr::Items(items) => IterRepr::Items(items.iter()),
            },
        }
    }

    /// The item at `index`; O(index) for decoded lists of variable-size items.
    pub fn get(&self, index: usize) -> Option<T> {
        match self.repr {
            Repr::Items(items) => items.get(index).copied(),
            Repr::Wire { .. } => self.iter().nth(index),
        }
    }

    /// Reads `count` items and keeps their bytes.
    pub(crate) fn read_counted(
        r: &mut BodyReader<'a>,
        count: usize,
        field: &'static str,
    ) -> Result<Self, DecodeError> {
        let start = r.remaining();
        for _ in 0..count {
            T::read(r, field)?;
        }
        let used = start.len() - r.remaining().len();
        Ok(List {
            repr: Repr::Wire {
                tag: r.tag(),
                field,
                bytes: &start[..used],
                len: count,
            },
        })
    }

    /// Reads items until a single NUL byte where the next item would start, and
    /// consumes that terminator.
    pub(crate) fn read_until_nul(
        r: &mut BodyReader<'a>,
        field: &'static str,
    ) -> Result<Self, DecodeError> {
        let start = r.remaining();
        let mut len = 0;
        loop {
            match r.remaining().first() {
                None => {
                    return Err(DecodeError::Truncated {
                        tag: r.tag(),
                        field,
                        missing: 1,
                    })
                }
                Some(0) => break,
                Some(_) => {
                    T::read(r, field)?;
                    len += 1;
                }
            }
        }
        let used = start.len() - r.remaining().len();
        r.u8(field)?;
        Ok(List {
            repr: Repr::Wire {
                tag: r.tag(),
                field,
                bytes: &start[..used],
                len,
            },
        })
    }

    /// Appends the items (no count, no terminator). Decoded lists are copied as bytes.
    pub(crate) fn write_items(
        &self,
        w: &mut MessageWriter<'_>,
        field: &'static str,
    ) -> Result<(), EncodeError> {
        match self.repr {
            Repr::Wire { bytes, .. } => {
                w.bytes(bytes);
                Ok(())
            }
            Repr::Items(items) => items.iter().try_for_each(|item| item.write(w, field)),
        }
    }

    /// Appends an Int16 count and the items.
    pub(crate) fn write_counted_u16(
        &self,
        w: &mut MessageWriter<'_>,
        field: &'static str,
    ) -> Result<(), EncodeError> {
        w.count_u16(field, self.len())?;
        self.write_items(w, field)
    }

    /// Appends the items and a NUL terminator.
    pub(crate) fn write_nul_terminated(
        &self,
        w: &mut MessageWriter<'_>,
        field: &'static str,
    ) -> Result<(), EncodeError> {
        self.write_items(w, field)?;
        w.u8(0);
        Ok(())
    }
}

impl<'a, T: ListItem<'a>> IntoIterator for List<'a, T> {
    type Item = T;
    type IntoIter = ListIter<'a, T>;

    fn into_iter(self) -> ListIter<'a, T> {
        self.iter()
    }
}

impl<'a, T: ListItem<'a>> IntoIterator for &List<'a, T> {
    type Item = T;
    type IntoIter = ListIter<'a, T>;

    fn into_iter(self) -> ListIter<'a, T> {
        self.iter()
    }
}

impl<'a, T: ListItem<'a> + PartialEq> PartialEq for List<'a, T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<'a, T: ListItem<'a> + Eq> Eq for List<'a, T> {}

impl<'a, T: ListItem<'a> + fmt::Debug> fmt::Debug for List<'a, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Iterator over a [`List`]'s items.
#[derive(Clone)]
pub struct ListIter<'a, T> {
    repr: IterRepr<'a, T>,
}

#[derive(Clone)]
enum IterRepr<'a, T> {
    Wire {
        reader: BodyReader<'a>,
        field: &'static str,
        left: usize,
    },
    Items(std::slice::Iter<'a, T>),
}

impl<'a, T: ListItem<'a>> Iterator for ListIter<'a, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match &mut self.repr {
            IterRepr::Wire {
                reader,
                field,
                left,
            } => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                // The bytes were validated when the message was decoded, so this
                // read succeeds; should it not, the iteration ends early.
                match T::read(reader, field) {
                    Ok(item) => Some(item),
                    Err(_) => {
                        *left = 0;
                        None
                    }
                }
            }
            IterRepr::Items(items) => items.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match &self.repr {
            IterRepr::Wire { left, .. } => *left,
            IterRepr::Items(items) => items.len(),
        };
        (n, Some(n))
    }
}

impl<'a, T: ListItem<'a>> ExactSizeIterator for ListIter<'a, T> {}

// ---- item types ----

/// A column or parameter value: `None` is SQL NULL (length -1 on the wire).
impl sealed::Sealed for Option<&[u8]> {}
impl<'a> ListItem<'a> for Option<&'a [u8]> {
    fn read(r: &mut BodyReader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        r.nullable_bytes(field)
    }
    fn write(&self, w: &mut MessageWriter<'_>, field: &'static str) -> Result<(), EncodeError> {
        w.nullable_bytes(field, *self)
    }
}

impl sealed::Sealed for Format {}
impl ListItem<'_> for Format {
    fn read(r: &mut BodyReader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let code = r.i16(field)?;
        Format::from_code(code).ok_or_else(|| r.invalid(field, code.into()))
    }
    fn write(&self, w: &mut MessageWriter<'_>, _field: &'static str) -> Result<(), EncodeError> {
        w.i16(self.code());
        Ok(())
    }
}

impl sealed::Sealed for Oid {}
impl ListItem<'_> for Oid {
    fn read(r: &mut BodyReader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        r.u32(field)
    }
    fn write(&self, w: &mut MessageWriter<'_>, _field: &'static str) -> Result<(), EncodeError> {
        w.u32(*self);
        Ok(())
    }
}

/// A NUL-terminated string (SASL mechanism names, protocol option names).
impl sealed::Sealed for &str {}
impl<'a> ListItem<'a> for &'a str {
    fn read(r: &mut BodyReader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        r.cstr(field)
    }
    fn write(&self, w: &mut MessageWriter<'_>, field: &'static str) -> Result<(), EncodeError> {
        w.cstr(field, self)
    }
}

/// A name/value pair of NUL-terminated strings (startup parameters).
impl sealed::Sealed for (&str, &str) {}
impl<'a> ListItem<'a> for (&'a str, &'a str) {
    fn read(r: &mut BodyReader<'a>, field: &'static str) -> Result<Self, DecodeError> {
        Ok((r.cstr(field)?, r.cstr(field)?))
    }
    fn write(&self, w: &mut MessageWriter<'_>, field: &'static str) -> Result<(), EncodeError> {
        if self.0.is_empty() {
            // An empty name would read back as the list terminator.
            return Err(EncodeError::NulInString {
                tag: w.tag(),
                field,
            });
        }
        w.cstr(field, self.0)?;
        w.cstr(field, self.1)
    }
}

pub(crate) use sealed::Sealed;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_and_built_lists_compare_by_items() {
        let wire = [0u8, 0, 0, 1, b'x', 0xff, 0xff, 0xff, 0xff];
        let mut r = BodyReader::new(Tag(b'D'), &wire);
        let decoded = List::<Option<&[u8]>>::read_counted(&mut r, 2, "values").unwrap();
        r.finish().unwrap();
        let items: [Option<&[u8]>; 2] = [Some(b"x"), None];
        assert_eq!(decoded, List::from(&items));
        assert_eq!(decoded.get(1), Some(None));
        assert_eq!(decoded.iter().len(), 2);
    }

    #[test]
    fn terminated_list_needs_its_terminator() {
        let mut r = BodyReader::new(Tag::STARTUP, b"user\0bob\0");
        assert!(matches!(
            List::<(&str, &str)>::read_until_nul(&mut r, "parameters"),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
