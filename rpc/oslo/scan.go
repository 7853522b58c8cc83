package oslo

import "unicode/utf8"

// peekAddress reads _msg_id, _reply_q and _unique_id from a body too big to
// parse: one pass over its bytes that allocates only those three values.
// An envelope's oslo.message is read through its string escapes, so the
// inner message is not copied out either. It reads them where
// decodeMessage would: in oslo.message when the body has an oslo.version,
// else at the top. What a body that is not the JSON it should be yields is
// what was found before the fault.
func peekAddress(body []byte) Message {
	var top, inner Message
	enveloped := false
	(&scanner{src: &rawBytes{b: body}}).object(func(key string, sc *scanner) bool {
		switch key {
		case "oslo.version":
			enveloped = true
			return false
		case "oslo.message":
			if c, _ := sc.peek(); c != '"' {
				return false
			}
			sc.next()
			inner = Message{} // the last one counts, as in encoding/json
			in := &escaped{outer: sc}
			(&scanner{src: in}).object(func(k string, isc *scanner) bool { return addressField(&inner, k, isc) })
			for { // the rest of the string
				if _, ok := in.next(); !ok {
					return true
				}
			}
		}
		return addressField(&top, key, sc)
	})
	if enveloped {
		return inner
	}
	return top
}

// addressField stores the value of an address key; it reports whether it
// consumed the value.
func addressField(m *Message, key string, sc *scanner) bool {
	var dst *string
	switch key {
	case "_msg_id":
		dst = &m.MsgID
	case "_reply_q":
		dst = &m.ReplyQ
	case "_unique_id":
		dst = &m.UniqueID
	default:
		return false
	}
	if c, _ := sc.peek(); c != '"' {
		return false
	}
	sc.next()
	if s, whole := sc.str(255); whole {
		*dst = s
	}
	return true
}

type byteSource interface{ next() (byte, bool) }

type rawBytes struct {
	b []byte
	i int
}

func (r *rawBytes) next() (byte, bool) {
	if r.i >= len(r.b) {
		return 0, false
	}
	r.i++
	return r.b[r.i-1], true
}

// escaped yields the content of a JSON string (after its opening quote)
// with its escapes undone, and ends at the closing quote.
type escaped struct {
	outer *scanner
	buf   [utf8.UTFMax]byte
	i, n  int
	end   bool
}

func (e *escaped) next() (byte, bool) {
	if e.i < e.n {
		e.i++
		return e.buf[e.i-1], true
	}
	if e.end {
		return 0, false
	}
	c, ok := e.outer.next()
	if ok && c == '\\' {
		c, ok = e.outer.next()
		switch {
		case !ok:
		case c == 'u':
			return e.unicode()
		default:
			return unescapeByte(c), true
		}
	}
	if !ok || c == '"' {
		e.end = true
		return 0, false
	}
	return c, true
}

func unescapeByte(c byte) byte {
	switch c {
	case 'n':
		return '\n'
	case 't':
		return '\t'
	case 'r':
		return '\r'
	case 'b':
		return '\b'
	case 'f':
		return '\f'
	}
	return c // '"', '\\', '/' (and what is not an escape)
}

// unicode decodes the \uXXXX escape after its "\u".
func (e *escaped) unicode() (byte, bool) {
	r, ok := hex4(e.outer)
	if !ok {
		e.end = true
		return 0, false
	}
	e.n, e.i = utf8.EncodeRune(e.buf[:], r), 1
	return e.buf[0], true
}

// hex4 reads the four hex digits of a \u escape. A surrogate (half of a
// pair) becomes U+FFFD: addresses are plain ASCII, and a pair is not
// joined.
func hex4(s byteSource) (rune, bool) {
	var r rune
	for range 4 {
		c, ok := s.next()
		if !ok {
			return 0, false
		}
		r = r<<4 | rune(hexValue(c))
	}
	return r, true
}

func hexValue(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10
	}
	return 0
}

// scanner walks JSON one byte at a time, with one byte of look-ahead.
type scanner struct {
	src   byteSource
	pk    byte
	hasPk bool
}

func (s *scanner) next() (byte, bool) {
	if s.hasPk {
		s.hasPk = false
		return s.pk, true
	}
	return s.src.next()
}

func (s *scanner) peek() (byte, bool) {
	if !s.hasPk {
		c, ok := s.src.next()
		if !ok {
			return 0, false
		}
		s.pk, s.hasPk = c, true
	}
	return s.pk, true
}

// ws skips white space and peeks at what follows.
func (s *scanner) ws() (byte, bool) {
	for {
		c, ok := s.peek()
		if !ok || (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
			return c, ok
		}
		s.hasPk = false
	}
}

// str reads a string's content after its opening quote, through its
// closing quote, unescaped, keeping at most limit bytes; whole is false
// when it kept less than all or the input ended first.
func (s *scanner) str(limit int) (string, bool) {
	var b []byte
	whole := true
	for {
		c, ok := s.next()
		if ok && c == '"' {
			return string(b), whole
		}
		if ok && c == '\\' {
			if c, ok = s.next(); ok && c == 'u' {
				var r rune
				if r, ok = hex4(s); ok {
					if more := utf8.AppendRune(b, r); len(more) <= limit {
						b = more
					} else {
						whole = false
					}
					continue
				}
			}
			c = unescapeByte(c)
		}
		if !ok {
			return string(b), false
		}
		if len(b) < limit {
			b = append(b, c)
		} else {
			whole = false
		}
	}
}

// skip passes over one value, however big, without keeping any of it.
func (s *scanner) skip() bool {
	depth := 0
	for {
		c, ok := s.next()
		if !ok {
			return false
		}
		switch c {
		case '"':
			for {
				c, ok = s.next()
				if ok && c == '\\' {
					_, ok = s.next()
					continue
				}
				if !ok {
					return false
				}
				if c == '"' {
					break
				}
			}
		case '{', '[':
			depth++
		case '}', ']':
			depth--
		}
		if depth == 0 {
			if c == '"' || c == '}' || c == ']' {
				return true
			}
			// a number or a literal ends before , } ] or white space
			if n, ok := s.peek(); !ok || n == ',' || n == '}' || n == ']' || n == ' ' || n == '\n' || n == '\t' || n == '\r' {
				return depth == 0
			}
		}
	}
}

// object walks an object, calling f for each key with the scanner at its
// value; f reports whether it consumed the value (else object skips it).
func (s *scanner) object(f func(key string, s *scanner) bool) bool {
	if c, ok := s.ws(); !ok || c != '{' {
		return false
	}
	s.next()
	for {
		c, ok := s.ws()
		if ok && c == '}' {
			s.next()
			return true
		}
		if !ok || c != '"' {
			return false
		}
		s.next()
		key, whole := s.str(64)
		if !whole {
			key = "" // not one of ours
		}
		if c, ok := s.ws(); !ok || c != ':' {
			return false
		}
		s.next()
		if _, ok := s.ws(); !ok {
			return false
		}
		if !f(key, s) && !s.skip() {
			return false
		}
		switch c, _ := s.ws(); c {
		case ',':
			s.next()
		case '}':
			s.next()
			return true
		default:
			return false
		}
	}
}
