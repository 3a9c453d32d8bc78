package invocation

import (
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"

	"github.com/nats-io/nats.go"
)

// Request id and trace context headers. Every invocation carries a request
// id and a W3C Trace Context (https://www.w3.org/TR/trace-context/) from
// the caller through the gateway and the runner to the function, and back
// on the answer. They are ordinary headers, not reserved ones: a function
// sees them, and a caller may set them.
const (
	// HeaderRequestID carries the invocation's request id: the caller's
	// when valid ([ValidRequestID]), else one the first hop generated.
	HeaderRequestID = "X-Request-Id"
	// HeaderTraceparent carries the W3C trace context: version 00, the
	// trace id, the span id of the hop that sent it, and the flags.
	HeaderTraceparent = "Traceparent"
	// HeaderTracestate carries the caller's vendor trace state, passed on
	// as received with a valid traceparent (truncated past
	// [MaxTracestate]).
	HeaderTracestate = "Tracestate"
	// HeaderTraceresponse, on an answer, carries the trace id and the span
	// id of the hop that answered (W3C Trace Context Level 2).
	HeaderTraceresponse = "Traceresponse"
)

// MaxRequestID is the longest request id kept, in bytes.
const MaxRequestID = 128

// MaxTracestate is the longest tracestate passed on whole, in bytes, its
// header fields joined with commas; a longer one is truncated by whole
// entries as W3C Trace Context asks (entries over 128 bytes first, then
// from the end).
const MaxTracestate = 512

// Log attribute keys of a trace, the same on every component's lines.
const (
	LogRequestID = "request_id"
	LogTraceID   = "trace_id"
	LogSpanID    = "span_id"
	LogParentID  = "parent_id"
)

// Trace flags this implementation knows; others are cleared when passed on.
const (
	// FlagSampled is the W3C sampled flag: the caller may have recorded
	// trace data.
	FlagSampled = 0x01
	// FlagRandom is the W3C Level 2 random-trace-id flag, set on the
	// traces Shoal starts: their trace ids are random.
	FlagRandom = 0x02
)

// Traceparent is a parsed W3C traceparent header value.
type Traceparent struct {
	// TraceID is the trace id: 32 lowercase hex digits, not all zero.
	TraceID string
	// ParentID is the span id of the sender: 16 lowercase hex digits, not
	// all zero.
	ParentID string
	// Flags are the trace flags (FlagSampled, FlagRandom, ...).
	Flags byte
}

// ParseTraceparent parses a traceparent value as W3C Trace Context
// specifies: two lowercase hex digits of version, not ff; for version 00,
// exactly "00-" 32 hex "-" 16 hex "-" 2 hex, trace id and parent id not
// all zero; a higher version is read the same way, and may go on past
// the flags after a "-". ok is false for anything else, and the trace
// must then restart.
func ParseTraceparent(v string) (tp Traceparent, ok bool) {
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return Traceparent{}, false
	}
	version, vok := hexByte(v[0], v[1])
	flags, fok := hexByte(v[53], v[54])
	if !vok || !fok || version == 0xff {
		return Traceparent{}, false
	}
	if len(v) > 55 && (version == 0 || v[55] != '-') {
		return Traceparent{}, false
	}
	traceID, parentID := v[3:35], v[36:52]
	if !lowerHex(traceID) || !lowerHex(parentID) {
		return Traceparent{}, false
	}
	return Traceparent{TraceID: traceID, ParentID: parentID, Flags: flags}, true
}

// ValidRequestID reports whether a caller's request id is kept: 1 to
// [MaxRequestID] bytes of visible ASCII ('!' to '~').
func ValidRequestID(id string) bool {
	if len(id) == 0 || len(id) > MaxRequestID {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < '!' || id[i] > '~' {
			return false
		}
	}
	return true
}

// Trace is one hop's part in an invocation's request id and trace
// context: the caller's request id (or a new one), the caller's trace (or
// a new one), and a new span id for this hop. [StartTrace] makes one;
// [Trace.Apply] passes it on to the next hop, [Trace.SetResponse] puts it
// on the answer. Its header values are shared with the headers they are
// set on, and never modified. The zero Trace is empty: its methods return
// "" and set nothing.
type Trace struct {
	// requestID and traceparent hold one value each, with no spare
	// capacity, so that appending to a header never writes into them.
	requestID   []string
	traceparent []string // "00-" trace id "-" this hop's span id "-" flags
	tracestate  []string // as received; nil when there is none to pass on
	parentID    string   // the caller's span id; "" when the trace starts here
	// otherCase is set when the caller's headers spelled one of the
	// names in another case: Apply removes those spellings.
	otherCase bool
}

// StartTrace starts this hop's part in the invocation whose incoming
// headers are h (names in any case; h is not modified): it keeps the
// caller's X-Request-Id when valid and generates one otherwise, continues
// the caller's traceparent when valid (with its tracestate) and starts a
// new trace otherwise (flags: random trace id, not sampled), and creates
// a span id for this hop. It costs two allocations.
func StartTrace(h map[string][]string) Trace {
	t, _ := startTrace(h, true, false)
	return t
}

// StartHTTPTrace is StartTrace for the headers of a request net/http
// parsed: their names are canonical, so no other spelling is looked for.
func StartHTTPTrace(h http.Header) Trace {
	t, _ := startTrace(h, false, false)
	return t
}

// ReceiveTrace is StartTrace then Apply on h itself, for a hop that hands
// the headers it received on to the next hop, as a runner hands an
// invocation's headers to the function: h is modified in place (made if
// nil) and returned. It costs one allocation when the caller sent a
// request id and a traceparent, as the gateway does: the caller's
// traceparent field is overwritten rather than replaced.
func ReceiveTrace(h nats.Header) (nats.Header, Trace) {
	if h == nil {
		h = make(nats.Header, 2)
	}
	t, applied := startTrace(h, true, true)
	if !applied {
		t.Apply(h)
	}
	return h, t
}

// startTrace is StartTrace; anyCase looks for the names in any case,
// inPlace allows it to write this hop's traceparent into h's own
// traceparent field. applied reports that h holds t as Apply would set it
// (only ever with inPlace).
func startTrace(h map[string][]string, anyCase, inPlace bool) (t Trace, applied bool) {
	var id, parent, state []string
	if anyCase {
		id, parent, state = traceHeaders(h, &t.otherCase)
	} else {
		id, parent, state = h[HeaderRequestID], h[HeaderTraceparent], h[HeaderTracestate]
	}
	// One string holds what is generated: the request id when the
	// caller's is not kept, then this hop's traceparent.
	var buf [32 + 55]byte
	n := 0
	if len(id) == 1 && ValidRequestID(id[0]) {
		t.requestID = id[:1:1]
	} else {
		putRandomHex(buf[:32])
		n = 32
	}
	tp := buf[n : n+55]
	copy(tp, "00-")
	tp[35], tp[52] = '-', '-'
	var flags byte
	if p, ok := parseTraceparentValues(parent); ok {
		copy(tp[3:35], p.TraceID)
		flags = p.Flags & (FlagSampled | FlagRandom)
		t.parentID = p.ParentID
		t.tracestate = keepTracestate(state)
	} else {
		putRandomHex(tp[3:35])
		flags = FlagRandom
	}
	putRandomHex(tp[36:52])
	tp[53], tp[54] = hexDigits[flags>>4], hexDigits[flags&0xf]
	s := string(buf[:n+55])
	switch {
	case n > 0:
		vals := &[2]string{s[:n], s[n:]}
		t.requestID, t.traceparent = vals[0:1:1], vals[1:2:2]
	case inPlace && !t.otherCase && len(parent) == 1:
		// parent is h's own field (there is no other spelling): the
		// request id is h's too, and the tracestate passed on is h's
		// or none.
		t.traceparent = parent[:1:1]
		t.traceparent[0] = s
		applied = len(state) == 0 || len(t.tracestate) == len(state) && &t.tracestate[0] == &state[0]
	default:
		t.traceparent = []string{s}
	}
	return t, applied
}

// RequestID is the invocation's request id.
func (t Trace) RequestID() string {
	if len(t.requestID) == 0 {
		return ""
	}
	return t.requestID[0]
}

// TraceID is the trace id, 32 lowercase hex digits.
func (t Trace) TraceID() string {
	if len(t.traceparent) == 0 {
		return ""
	}
	return t.traceparent[0][3:35]
}

// SpanID is this hop's span id, 16 lowercase hex digits: the parent id the
// next hop receives.
func (t Trace) SpanID() string {
	if len(t.traceparent) == 0 {
		return ""
	}
	return t.traceparent[0][36:52]
}

// ParentID is the caller's span id, or "" when the trace started here.
func (t Trace) ParentID() string { return t.parentID }

// Traceparent is the traceparent value the next hop receives, and the
// traceresponse value of this hop's answer: "00-" TraceID "-" SpanID "-"
// flags.
func (t Trace) Traceparent() string {
	if len(t.traceparent) == 0 {
		return ""
	}
	return t.traceparent[0]
}

// Sampled reports the sampled flag the caller sent (false for a new trace).
func (t Trace) Sampled() bool {
	tp := t.Traceparent()
	if tp == "" {
		return false
	}
	flags, _ := hexByte(tp[53], tp[54])
	return flags&FlagSampled != 0
}

// Tracestate is the tracestate passed on, its fields joined with commas,
// or "" when there is none.
func (t Trace) Tracestate() string { return strings.Join(t.tracestate, ",") }

// Apply sets t on h, the headers of the request to the next hop (the
// runner, or the function): X-Request-Id, Traceparent with this hop's span
// id, and Tracestate when there is one to pass on (else it is removed).
// Spellings of these names in another case that StartTrace saw are
// removed. h must not be nil.
func (t Trace) Apply(h map[string][]string) {
	if t.otherCase {
		for k := range h {
			if isTraceHeader(k) {
				delete(h, k)
			}
		}
	}
	if len(t.traceparent) == 0 {
		return
	}
	set(h, HeaderRequestID, t.requestID)
	set(h, HeaderTraceparent, t.traceparent)
	if t.tracestate != nil {
		set(h, HeaderTracestate, t.tracestate)
	} else {
		delete(h, HeaderTracestate)
	}
}

// set sets h[k] to v unless it holds v already: assigning even an
// existing key grows a full small map (8 entries) into a table.
func set(h map[string][]string, k string, v []string) {
	if cur := h[k]; len(cur) != len(v) || len(v) == 0 || &cur[0] != &v[0] {
		h[k] = v
	}
}

// SetResponse sets X-Request-Id and Traceresponse (this hop's span) on h,
// the headers of this hop's answer, replacing any the function set. h
// must not be nil, and its names canonical.
func (t Trace) SetResponse(h map[string][]string) {
	if len(t.traceparent) == 0 {
		return
	}
	h[HeaderRequestID] = t.requestID
	h[HeaderTraceresponse] = t.traceparent
}

// LogAttr returns the request id and trace id as one attribute, a group
// with no key, which slog's handlers inline:
// `request_id=... trace_id=...`.
func (t Trace) LogAttr() slog.Attr {
	return slog.Attr{Value: slog.GroupValue(slog.String(LogRequestID, t.RequestID()), slog.String(LogTraceID, t.TraceID()))}
}

// AppendLogAttrs appends request_id, trace_id, span_id and, when the trace
// did not start here, parent_id to attrs.
func (t Trace) AppendLogAttrs(attrs []slog.Attr) []slog.Attr {
	attrs = append(attrs, slog.String(LogRequestID, t.RequestID()), slog.String(LogTraceID, t.TraceID()), slog.String(LogSpanID, t.SpanID()))
	if t.parentID != "" {
		attrs = append(attrs, slog.String(LogParentID, t.parentID))
	}
	return attrs
}

// traceHeaders finds the request id, traceparent and tracestate fields of
// h. Names are tried in canonical form first; only when one is missing
// are the others scanned for, in any case (NATS keeps a sender's
// spelling). otherCase is set when a name was found in another case.
func traceHeaders(h map[string][]string, otherCase *bool) (id, parent, state []string) {
	id, iok := h[HeaderRequestID]
	parent, pok := h[HeaderTraceparent]
	state, sok := h[HeaderTracestate]
	if iok && pok && sok {
		return id, parent, state
	}
	for k, v := range h {
		if !isTraceHeader(k) {
			continue
		}
		*otherCase = true
		switch len(k) {
		case len(HeaderRequestID):
			id = append(id[:len(id):len(id)], v...)
		case len(HeaderTraceparent):
			parent = append(parent[:len(parent):len(parent)], v...)
		default:
			state = append(state[:len(state):len(state)], v...)
		}
	}
	return id, parent, state
}

// isTraceHeader reports whether k is X-Request-Id, Traceparent or
// Tracestate in a case other than the canonical one.
func isTraceHeader(k string) bool {
	var name string
	switch len(k) {
	case len(HeaderRequestID):
		name = HeaderRequestID
	case len(HeaderTraceparent):
		name = HeaderTraceparent
	case len(HeaderTracestate):
		name = HeaderTracestate
	default:
		return false
	}
	return k != name && asciiEqualFold(k, name)
}

// parseTraceparentValues parses the traceparent fields of a request: one,
// valid. Several are invalid, as the trace they name is ambiguous.
func parseTraceparentValues(vs []string) (Traceparent, bool) {
	if len(vs) != 1 {
		return Traceparent{}, false
	}
	return ParseTraceparent(vs[0])
}

// keepTracestate returns the tracestate fields to pass on: as received
// when their joined length is within MaxTracestate, else truncated by
// whole entries. A byte outside printable ASCII and tab drops the whole
// header, and so does an empty one (nothing to pass on).
func keepTracestate(vs []string) []string {
	n, empty := -1, true
	for _, v := range vs {
		for i := 0; i < len(v); i++ {
			switch c := v[i]; {
			case c == ' ' || c == '\t' || c == ',':
			case c < ' ' || c > '~':
				return nil
			default:
				empty = false
			}
		}
		n += len(v) + 1
	}
	switch {
	case empty:
		return nil
	case n <= MaxTracestate:
		return vs[:len(vs):len(vs)]
	}
	return truncateTracestate(vs)
}

// truncateTracestate joins fields longer than MaxTracestate into one,
// keeping whole entries: those over 128 bytes are removed first, then
// entries from the end, until it fits.
func truncateTracestate(vs []string) []string {
	var entries []string
	for _, v := range vs {
		for e := range strings.SplitSeq(v, ",") {
			if e = strings.Trim(e, " \t"); e != "" && len(e) <= 128 {
				entries = append(entries, e)
			}
		}
	}
	n := -1
	for i, e := range entries {
		if n+1+len(e) > MaxTracestate {
			entries = entries[:i]
			break
		}
		n += 1 + len(e)
	}
	if len(entries) == 0 {
		return nil
	}
	return []string{strings.Join(entries, ",")}
}

// putRandomHex fills dst, whose length is a multiple of 16, with random
// lowercase hex digits, never all zero. The source is math/rand/v2's
// runtime generator (ChaCha8 per thread, seeded by the operating system):
// a few nanoseconds, no lock, no allocation. Ids need to be unique and
// unguessable enough for correlation, not secret.
func putRandomHex(dst []byte) {
	for {
		var bits uint64
		for i := 0; i+16 <= len(dst); i += 16 {
			u := rand.Uint64()
			bits |= u
			for j := i + 15; j >= i; j-- {
				dst[j] = hexDigits[u&0xf]
				u >>= 4
			}
		}
		if bits != 0 {
			return
		}
	}
}

// lowerHex reports whether s is lowercase hex digits, not all zero.
func lowerHex(s string) bool {
	var nonZero byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
		nonZero |= c ^ '0'
	}
	return nonZero != 0
}

const hexDigits = "0123456789abcdef"

// hexByte decodes two lowercase hex digits.
func hexByte(hi, lo byte) (byte, bool) {
	h, ok1 := hexDigit(hi)
	l, ok2 := hexDigit(lo)
	return h<<4 | l, ok1 && ok2
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
