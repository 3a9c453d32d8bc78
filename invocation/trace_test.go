package invocation_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/invocation"
)

// The W3C Trace Context examples, and the cases of its test suite
// (github.com/w3c/trace-context, test/test.py).
func TestParseTraceparent(t *testing.T) {
	const (
		trace  = "12345678901234567890123456789012"
		parent = "1234567890123456"
	)
	valid := []struct {
		name, value   string
		trace, parent string
		flags         byte
	}{
		{"spec example, sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 0x01},
		{"spec example, not sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 0x00},
		{"spec request example", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 0x01},
		{"unknown flags are read", "00-" + trace + "-" + parent + "-ff", trace, parent, 0xff},
		{"future version cc", "cc-" + trace + "-" + parent + "-01", trace, parent, 0x01},
		{"future version with more fields", "cc-" + trace + "-" + parent + "-01-what-the-future-will-be-like", trace, parent, 0x01},
	}
	for _, tt := range valid {
		t.Run(tt.name, func(t *testing.T) {
			tp, ok := invocation.ParseTraceparent(tt.value)
			if !ok || tp.TraceID != tt.trace || tp.ParentID != tt.parent || tp.Flags != tt.flags {
				t.Errorf("ParseTraceparent(%q) = %+v, %v; want %s %s %02x", tt.value, tp, ok, tt.trace, tt.parent, tt.flags)
			}
		})
	}
	invalid := []struct{ name, value string }{
		{"empty", ""},
		{"version 00 with trailing characters", "00-" + trace + "-" + parent + "-01."},
		{"version 00 with more fields", "00-" + trace + "-" + parent + "-01-what-the-future-will-be-like"},
		{"future version not followed by a dash", "cc-" + trace + "-" + parent + "-01.what-the-future-will-be-like"},
		{"version ff", "ff-" + trace + "-" + parent + "-01"},
		{"version illegal character", ".0-" + trace + "-" + parent + "-01"},
		{"version illegal character 2", "0.-" + trace + "-" + parent + "-01"},
		{"version uppercase", "0A-" + trace + "-" + parent + "-01"},
		{"version too long", "000-" + trace + "-" + parent + "-01"},
		{"version too long 2", "0000-" + trace + "-" + parent + "-01"},
		{"version too short", "0-" + trace + "-" + parent + "-01"},
		{"trace id all zero", "00-00000000000000000000000000000000-" + parent + "-01"},
		{"trace id illegal character", "00-.2345678901234567890123456789012-" + parent + "-01"},
		{"trace id illegal character 2", "00-1234567890123456789012345678901.-" + parent + "-01"},
		{"trace id uppercase", "00-4BF92F3577B34DA6A3CE929D0E0E4736-" + parent + "-01"},
		{"trace id too long", "00-123456789012345678901234567890123-" + parent + "-01"},
		{"trace id too short", "00-1234567890123456789012345678901-" + parent + "-01"},
		{"parent id all zero", "00-" + trace + "-0000000000000000-01"},
		{"parent id illegal character", "00-" + trace + "-.234567890123456-01"},
		{"parent id illegal character 2", "00-" + trace + "-123456789012345.-01"},
		{"parent id uppercase", "00-" + trace + "-00F067AA0BA902B7-01"},
		{"parent id too long", "00-" + trace + "-12345678901234567-01"},
		{"parent id too short", "00-" + trace + "-123456789012345-01"},
		{"flags illegal character", "00-" + trace + "-" + parent + "-.0"},
		{"flags illegal character 2", "00-" + trace + "-" + parent + "-0."},
		{"flags uppercase", "00-" + trace + "-" + parent + "-0F"},
		{"flags too long", "00-" + trace + "-" + parent + "-001"},
		{"flags too short", "00-" + trace + "-" + parent + "-0"},
		{"wrong delimiter", "00_" + trace + "_" + parent + "_01"},
		{"spaces around", " 00-" + trace + "-" + parent + "-01"},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			if tp, ok := invocation.ParseTraceparent(tt.value); ok {
				t.Errorf("ParseTraceparent(%q) = %+v, valid; want invalid", tt.value, tp)
			}
		})
	}
}

func TestValidRequestID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"abc", true},
		{"4f9c-11ee_be56.0242:ac120002/~!", true},
		{strings.Repeat("a", invocation.MaxRequestID), true},
		{strings.Repeat("a", invocation.MaxRequestID+1), false},
		{"", false},
		{"a b", false},
		{"a\tb", false},
		{"a\x7fb", false},
		{"héllo", false},
		{"a\r\nX-Evil: 1", false},
	}
	for _, tt := range tests {
		if got := invocation.ValidRequestID(tt.id); got != tt.want {
			t.Errorf("ValidRequestID(%q) = %v, want %v", tt.id, got, tt.want)
		}
	}
}

var (
	generatedID = regexp.MustCompile(`^[0-9a-f]{32}$`)
	traceparent = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$`)
)

// checkTraceparent checks that v is a valid version 00 traceparent and
// returns its parts.
func checkTraceparent(t *testing.T, v string) (trace, span, flags string) {
	t.Helper()
	m := traceparent.FindStringSubmatch(v)
	if m == nil {
		t.Fatalf("traceparent %q is not 00-<32 hex>-<16 hex>-<2 hex>", v)
	}
	if _, ok := invocation.ParseTraceparent(v); !ok {
		t.Fatalf("traceparent %q does not parse", v)
	}
	return m[1], m[2], m[3]
}

func TestStartTrace(t *testing.T) {
	const (
		callerTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
		callerParent = "00f067aa0ba902b7"
		valid        = "00-" + callerTrace + "-" + callerParent + "-01"
	)
	tests := []struct {
		name   string
		header nats.Header
		// keepID is the request id that must be kept; "" wants a
		// generated one.
		keepID string
		// continues is set when the caller's trace must be continued.
		continues bool
		flags     string
		state     string
	}{
		{name: "nothing", header: nats.Header{}, flags: "02"},
		{name: "nil header", header: nil, flags: "02"},
		{name: "request id kept", header: nats.Header{"X-Request-Id": {"abc-123"}}, keepID: "abc-123", flags: "02"},
		{name: "request id too long", header: nats.Header{"X-Request-Id": {strings.Repeat("x", 129)}}, flags: "02"},
		{name: "request id with a space", header: nats.Header{"X-Request-Id": {"a b"}}, flags: "02"},
		{name: "request id empty", header: nats.Header{"X-Request-Id": {""}}, flags: "02"},
		{name: "two request ids", header: nats.Header{"X-Request-Id": {"a", "b"}}, flags: "02"},
		{name: "request id in lowercase", header: nats.Header{"x-request-id": {"low"}}, keepID: "low", flags: "02"},
		{
			name:      "valid traceparent continued with its tracestate",
			header:    nats.Header{"Traceparent": {valid}, "Tracestate": {"congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"}},
			continues: true, flags: "01", state: "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
		},
		{name: "traceparent in lowercase, as nats req -H sends it", header: nats.Header{"traceparent": {valid}, "tracestate": {"a=1"}}, continues: true, flags: "01", state: "a=1"},
		{name: "traceparent in mixed case", header: nats.Header{"TrAcEpArEnT": {valid}}, continues: true, flags: "01"},
		{name: "unknown flags cleared, random kept", header: nats.Header{"Traceparent": {"00-" + callerTrace + "-" + callerParent + "-ff"}}, continues: true, flags: "03"},
		{name: "future version downgraded", header: nats.Header{"Traceparent": {"cc-" + callerTrace + "-" + callerParent + "-00-future"}}, continues: true, flags: "00"},
		{name: "all-zero trace id restarts, tracestate dropped", header: nats.Header{"Traceparent": {"00-00000000000000000000000000000000-" + callerParent + "-01"}, "Tracestate": {"a=1"}}, flags: "02"},
		{name: "uppercase restarts", header: nats.Header{"Traceparent": {strings.ToUpper(valid)}}, flags: "02"},
		{name: "version ff restarts", header: nats.Header{"Traceparent": {"ff" + valid[2:]}}, flags: "02"},
		{name: "wrong length restarts", header: nats.Header{"Traceparent": {valid + "0"}}, flags: "02"},
		{name: "two traceparents restart", header: nats.Header{"Traceparent": {valid}, "traceparent": {valid}}, flags: "02"},
		{name: "empty tracestate not passed on", header: nats.Header{"Traceparent": {valid}, "Tracestate": {" , "}}, continues: true, flags: "01"},
		{name: "tracestate with a control byte dropped", header: nats.Header{"Traceparent": {valid}, "Tracestate": {"a=1\x01"}}, continues: true, flags: "01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := invocation.StartTrace(tt.header)
			if tt.keepID != "" {
				if tr.RequestID() != tt.keepID {
					t.Errorf("request id %q, want the caller's %q", tr.RequestID(), tt.keepID)
				}
			} else if !generatedID.MatchString(tr.RequestID()) {
				t.Errorf("request id %q, want 32 generated hex digits", tr.RequestID())
			}
			trace, span, flags := checkTraceparent(t, tr.Traceparent())
			if trace != tr.TraceID() || span != tr.SpanID() {
				t.Errorf("TraceID %q SpanID %q, traceparent %q", tr.TraceID(), tr.SpanID(), tr.Traceparent())
			}
			if flags != tt.flags {
				t.Errorf("flags %q, want %q", flags, tt.flags)
			}
			if tt.continues {
				if trace != callerTrace || tr.ParentID() != callerParent {
					t.Errorf("trace %q parent %q, want the caller's %q %q", trace, tr.ParentID(), callerTrace, callerParent)
				}
			} else if trace == callerTrace || tr.ParentID() != "" {
				t.Errorf("trace %q parent %q, want a new trace", trace, tr.ParentID())
			}
			if span == callerParent {
				t.Errorf("span id %q is the caller's", span)
			}
			if tr.Tracestate() != tt.state {
				t.Errorf("tracestate %q, want %q", tr.Tracestate(), tt.state)
			}
			if want := flags == "01" || flags == "03"; tr.Sampled() != want {
				t.Errorf("Sampled() = %v with flags %s", tr.Sampled(), flags)
			}

			// Apply hands the next hop exactly one of each, in
			// canonical form, and nothing else changes.
			h := nats.Header{"Content-Type": {"text/plain"}}
			for k, v := range tt.header {
				h[k] = v
			}
			tr.Apply(h)
			checkNextHop(t, h, tr, tt.state)

			// ReceiveTrace does the same in place.
			in := nats.Header{"Content-Type": {"text/plain"}}
			for k, v := range tt.header {
				in[k] = slices.Clone(v)
			}
			out, rt := invocation.ReceiveTrace(in)
			checkNextHop(t, out, rt, tt.state)
			if tt.keepID != "" && rt.RequestID() != tt.keepID || tt.continues && rt.TraceID() != callerTrace || !tt.continues && rt.ParentID() != "" {
				t.Errorf("ReceiveTrace: request id %q, trace %q, parent %q", rt.RequestID(), rt.TraceID(), rt.ParentID())
			}
			if reflect.ValueOf(out).Pointer() != reflect.ValueOf(in).Pointer() {
				t.Errorf("ReceiveTrace returned another map than it was given")
			}

			resp := http.Header{"X-Request-Id": {"the function's"}, "Traceresponse": {"the function's"}}
			tr.SetResponse(resp)
			if resp.Get("X-Request-Id") != tr.RequestID() || resp.Get("Traceresponse") != tr.Traceparent() || len(resp["X-Request-Id"]) != 1 {
				t.Errorf("response headers %v", resp)
			}
		})
	}
}

// Every hop starts a span of its own: the next hop's parent is this hop's
// span, and ids do not repeat.
// checkNextHop checks that h, the headers the next hop receives, hold
// tr: one X-Request-Id, one Traceparent, the tracestate state, no other
// spelling of these names, and Content-Type untouched.
func checkNextHop(t *testing.T, h nats.Header, tr invocation.Trace, state string) {
	t.Helper()
	got := http.Header(h)
	for k := range h {
		if k != http.CanonicalHeaderKey(k) {
			t.Errorf("the next hop gets %s, not in canonical form: %v", k, h)
		}
	}
	if v := got["X-Request-Id"]; len(v) != 1 || v[0] != tr.RequestID() {
		t.Errorf("X-Request-Id %q, want %q", v, tr.RequestID())
	}
	if v := got["Traceparent"]; len(v) != 1 || v[0] != tr.Traceparent() {
		t.Errorf("Traceparent %q, want %q", v, tr.Traceparent())
	}
	if v := strings.Join(got["Tracestate"], ","); v != state {
		t.Errorf("Tracestate %q, want %q", v, state)
	}
	if got.Get("Content-Type") != "text/plain" {
		t.Errorf("another header changed: %v", h)
	}
}

func TestStartTraceChain(t *testing.T) {
	client := invocation.StartTrace(nil)
	h := nats.Header{}
	client.Apply(h)
	gateway := invocation.StartTrace(h)
	h2 := nats.Header{}
	gateway.Apply(h2)
	runner := invocation.StartTrace(h2)
	if client.RequestID() != gateway.RequestID() || gateway.RequestID() != runner.RequestID() {
		t.Errorf("request ids %q %q %q, want one", client.RequestID(), gateway.RequestID(), runner.RequestID())
	}
	if client.TraceID() != runner.TraceID() {
		t.Errorf("trace ids %q %q, want one", client.TraceID(), runner.TraceID())
	}
	if gateway.ParentID() != client.SpanID() || runner.ParentID() != gateway.SpanID() {
		t.Errorf("spans %s -> %s (parent %s) -> %s (parent %s)", client.SpanID(), gateway.SpanID(), gateway.ParentID(), runner.SpanID(), runner.ParentID())
	}
	seen := map[string]bool{}
	for range 1000 {
		tr := invocation.StartTrace(nil)
		for _, id := range []string{tr.RequestID(), tr.TraceID(), tr.SpanID()} {
			if seen[id] {
				t.Fatalf("id %s generated twice", id)
			}
			seen[id] = true
		}
	}
}

func TestTracestateTruncated(t *testing.T) {
	long := strings.Repeat("x", 200)
	var entries []string
	for i := range 60 {
		entries = append(entries, "k"+strings.Repeat("0", 3)+string(rune('a'+i%26))+"=v"+strings.Repeat("1", 10))
	}
	h := nats.Header{
		"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		// An entry over 128 bytes goes first, then entries from the end.
		"Tracestate": {"big=" + long + "," + strings.Join(entries[:30], ","), strings.Join(entries[30:], ",")},
	}
	tr := invocation.StartTrace(h)
	got := tr.Tracestate()
	if len(got) > invocation.MaxTracestate || strings.Contains(got, "big=") || !strings.HasPrefix(got, entries[0]+",") {
		t.Fatalf("tracestate of %d bytes: %q", len(got), got)
	}
	want := strings.Join(entries, ",")[:len(got)]
	if got != want {
		t.Errorf("tracestate %q, want the first entries %q", got, want)
	}
	if next := entries[strings.Count(got, ",")+1]; len(got)+1+len(next) <= invocation.MaxTracestate {
		t.Errorf("tracestate truncated to %d bytes; %q would have fit", len(got), next)
	}
}

func TestTraceLogAttr(t *testing.T) {
	tr := invocation.StartTrace(nats.Header{"X-Request-Id": {"req-1"}})
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Warn("failed", "function", "f", tr.LogAttr())
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatal(err)
	}
	if line["request_id"] != "req-1" || line["trace_id"] != tr.TraceID() || line["function"] != "f" {
		t.Errorf("log line %s", buf.Bytes())
	}
	var zero invocation.Trace
	if zero.RequestID() != "" || zero.TraceID() != "" || zero.SpanID() != "" || zero.Traceparent() != "" || zero.Sampled() {
		t.Error("the zero Trace is not empty")
	}
	h := http.Header{}
	zero.Apply(h)
	zero.SetResponse(h)
	if len(h) != 0 {
		t.Errorf("the zero Trace set %v", h)
	}
}

// The hop's cost: two allocations (the generated strings, their header
// slices) at the first hop, one at a runner reached through a gateway.
func TestStartTraceAllocs(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	plain := http.Header{"User-Agent": {"curl"}}
	continued := http.Header{"User-Agent": {"curl"}, "X-Request-Id": {"abc"}, "Traceparent": {tp}}
	fromGateway := nats.Header{"X-Request-Id": {"abc"}, "Traceparent": {tp}, "Shoal-Method": {"GET"}}
	tests := []struct {
		name  string
		start func() invocation.Trace
		want  float64
	}{
		{"gateway, new", func() invocation.Trace { return invocation.StartHTTPTrace(plain) }, 2},
		{"gateway, continued", func() invocation.Trace { return invocation.StartHTTPTrace(continued) }, 2},
		{"runner, from a gateway", func() invocation.Trace {
			_, tr := invocation.ReceiveTrace(fromGateway)
			return tr
		}, 1},
		{"runner, no headers", func() invocation.Trace {
			_, tr := invocation.ReceiveTrace(nil)
			return tr
		}, 4}, // and the header map, two
	}
	for _, tt := range tests {
		out := make(nats.Header, 8)
		allocs := testing.AllocsPerRun(100, func() {
			tr := tt.start()
			tr.Apply(out)
			tr.SetResponse(out)
		})
		if allocs > tt.want {
			t.Errorf("%s: %v allocations, want at most %v", tt.name, allocs, tt.want)
		}
	}
}

func BenchmarkStartTrace(b *testing.B) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	// A request as the benchmark's and curl's: a few headers.
	plain := http.Header{"User-Agent": {"Go-http-client/1.1"}, "Accept-Encoding": {"gzip"}}
	continued := http.Header{"User-Agent": {"Go-http-client/1.1"}, "Accept-Encoding": {"gzip"}, "X-Request-Id": {"f0e1d2c3b4a5"}, "Traceparent": {tp}}
	b.Run("gateway/new", func(b *testing.B) {
		out := make(nats.Header, 8)
		b.ReportAllocs()
		for b.Loop() {
			tr := invocation.StartHTTPTrace(plain)
			tr.Apply(out)
		}
	})
	b.Run("gateway/continued", func(b *testing.B) {
		out := make(nats.Header, 8)
		b.ReportAllocs()
		for b.Loop() {
			tr := invocation.StartHTTPTrace(continued)
			tr.Apply(out)
		}
	})
	// What a runner receives from a gateway.
	fromGateway := nats.Header{"User-Agent": {"Go-http-client/1.1"}, "Accept-Encoding": {"gzip"}, "Shoal-Method": {"GET"},
		"X-Forwarded-For": {"127.0.0.1"}, "X-Forwarded-Host": {"localhost"}, "X-Forwarded-Proto": {"http"},
		"X-Request-Id": {"f0e1d2c3b4a5"}, "Traceparent": {tp}}
	b.Run("runner", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			invocation.ReceiveTrace(fromGateway)
		}
	})
	b.Run("runner/no-headers", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			invocation.ReceiveTrace(nil)
		}
	})
}
