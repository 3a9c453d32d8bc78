package invocation_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/invocation"
)

func TestReserved(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"Shoal-Method", true},
		{"shoal-path", true},
		{"SHOAL-X", true},
		{"Nats-Service-Error", true},
		{"nats-msg-id", true},
		{"Shoal", false},
		{"X-Shoal-Method", false},
		{"Content-Type", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := invocation.Reserved(tt.name); got != tt.want {
			t.Errorf("Reserved(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestRequestRoundTrip sends an HTTP request through NewRequestMsg and
// NewHTTPRequest, as gateway and runner do, and compares what arrives.
func TestRequestRoundTrip(t *testing.T) {
	r := httptest.NewRequest("DELETE", "http://gw.example/function/f/a%20b/c?q=1&q=2", strings.NewReader("body"))
	r.RemoteAddr = "10.1.2.3:5555"
	r.Header.Set("X-Forwarded-For", "192.0.2.1")
	r.Header.Set("Authorization", "Bearer t")
	r.Header.Set("Shoal-Path", "/spoofed")
	r.Header.Set("Nats-Msg-Id", "spoofed")
	r.Header.Set("Connection", "close, X-Private")
	r.Header.Set("X-Private", "hop")
	r.Header.Set("Te", "trailers")

	msg := invocation.NewRequestMsg("fn.f", r, "/a%20b/c", []byte("body"))
	if msg.Subject != "fn.f" || string(msg.Data) != "body" {
		t.Fatalf("msg = %s %q", msg.Subject, msg.Data)
	}
	got, err := invocation.NewHTTPRequest(context.Background(), msg.Header, msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(got.Body)
	if got.Method != "DELETE" || got.URL.Path != "/a b/c" || got.URL.RawPath != "/a%20b/c" || got.URL.RawQuery != "q=1&q=2" || string(body) != "body" {
		t.Errorf("request = %s %s (raw %s) ?%s %q", got.Method, got.URL.Path, got.URL.RawPath, got.URL.RawQuery, body)
	}
	if got.RequestURI != "/a%20b/c?q=1&q=2" || got.Host != "gw.example" || got.ContentLength != 4 {
		t.Errorf("RequestURI %q Host %q ContentLength %d", got.RequestURI, got.Host, got.ContentLength)
	}
	wantHeader := http.Header{
		"Authorization":     {"Bearer t"},
		"X-Forwarded-For":   {"192.0.2.1, 10.1.2.3"},
		"X-Forwarded-Host":  {"gw.example"},
		"X-Forwarded-Proto": {"http"},
	}
	for k, v := range wantHeader {
		if !slices.Equal(got.Header[k], v) {
			t.Errorf("header %s = %v, want %v", k, got.Header[k], v)
		}
	}
	for _, k := range []string{"Shoal-Path", "Nats-Msg-Id", "Connection", "X-Private", "Te"} {
		if _, ok := got.Header[k]; ok {
			t.Errorf("header %s crossed to the function", k)
		}
	}
}

func TestNewHTTPRequestDefaultsAndErrors(t *testing.T) {
	r, err := invocation.NewHTTPRequest(context.Background(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Method != invocation.DefaultMethod || r.URL.Path != "/" || r.Body != http.NoBody || r.Header == nil {
		t.Errorf("defaults: %s %s body %v header %v", r.Method, r.URL.Path, r.Body, r.Header)
	}

	tests := []struct {
		name   string
		header nats.Header
	}{
		{"method with a space", nats.Header{invocation.HeaderMethod: {"GE T"}}},
		{"relative path", nats.Header{invocation.HeaderPath: {"a/b"}}},
		{"bad escape", nats.Header{invocation.HeaderPath: {"/%zz"}}},
	}
	for _, tt := range tests {
		_, err := invocation.NewHTTPRequest(context.Background(), tt.header, nil)
		ierr, ok := errors.AsType[*invocation.Error](err)
		if !ok || ierr.Code != invocation.CodeBadRequest || ierr.Status != 400 {
			t.Errorf("%s: err = %v, want a 400 bad_request", tt.name, err)
		}
	}
}

func TestResponseRoundTrip(t *testing.T) {
	h := http.Header{
		"Content-Type":  {"text/plain"},
		"Shoal-Status":  {"200"},
		"Nats-Anything": {"x"},
		"X-Split":       {"a\r\nInjected: yes"},
		"Set-Cookie":    {"a=1", "b=2"},
	}
	msg := invocation.NewResponseMsg("_INBOX.x", 201, h, []byte("made"))
	out := http.Header{}
	status, err := invocation.ReadReply(out, msg.Header)
	if err != nil || status != 201 {
		t.Fatalf("ReadReply = %d, %v; want 201", status, err)
	}
	want := http.Header{"Content-Type": {"text/plain"}, "Set-Cookie": {"a=1", "b=2"}}
	if len(out) != len(want) {
		t.Errorf("headers = %v, want %v", out, want)
	}
	for k, v := range want {
		if !slices.Equal(out[k], v) {
			t.Errorf("header %s = %v, want %v", k, out[k], v)
		}
	}
}

func TestReplyStatus(t *testing.T) {
	tests := []struct {
		name    string
		header  nats.Header
		want    int
		wantErr bool
	}{
		{"plain NATS responder", nats.Header{"X-A": {"1"}}, 200, false},
		{"function status", nats.Header{invocation.HeaderStatus: {"404"}}, 404, false},
		{"error reply", nats.Header{invocation.HeaderServiceErrorCode: {"504"}, invocation.HeaderStatus: {"504"}}, 504, false},
		{"foreign micro error code", nats.Header{invocation.HeaderServiceErrorCode: {"E42"}}, 500, false},
		{"status not a number", nats.Header{invocation.HeaderStatus: {"ok"}, "X-A": {"1"}}, 0, true},
		{"informational status", nats.Header{invocation.HeaderStatus: {"101"}, "X-A": {"1"}}, 0, true},
	}
	for _, tt := range tests {
		out := http.Header{}
		got, err := invocation.ReadReply(out, tt.header)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("%s: ReadReply = %d, %v; want %d, error %v", tt.name, got, err, tt.want, tt.wantErr)
		}
		if err != nil && len(out) > 0 {
			t.Errorf("%s: a reply with an unreadable status added headers %v", tt.name, out)
		}
	}
}

func TestErrorShape(t *testing.T) {
	e := invocation.Errorf(503, invocation.CodeNoRunner, "no runner for %q", "f")
	if got := string(e.Body()); got != `{"error":{"code":"no_runner","message":"no runner for \"f\""}}`+"\n" {
		t.Errorf("Body = %s", got)
	}
	rec := httptest.NewRecorder()
	e.WriteHTTP(rec)
	if rec.Code != 503 || rec.Header().Get("Retry-After") != "1" || rec.Header().Get("Content-Type") != "application/json" {
		t.Errorf("WriteHTTP: %d %v", rec.Code, rec.Header())
	}
	msg := e.Msg("_INBOX.1")
	if msg.Header.Get(invocation.HeaderServiceErrorCode) != "503" || msg.Header.Get(invocation.HeaderError) != "no_runner" || msg.Header.Get(invocation.HeaderServiceError) != e.Message {
		t.Errorf("Msg headers = %v", msg.Header)
	}
	back, ok := invocation.ParseError(503, msg.Data)
	if !ok || *back != *e {
		t.Errorf("ParseError = %+v, %v; want %+v", back, ok, e)
	}
	if _, ok := invocation.ParseError(500, []byte("pong!")); ok {
		t.Error("ParseError accepted a body that is not an error")
	}
	if e := invocation.Errorf(504, invocation.CodeTimeout, "slow"); e.Header().Get("Retry-After") != "" {
		t.Error("a timeout is not an invitation to retry at once")
	}
}

// TestHeaderNamesIgnoreCase: NATS keeps header names as sent, HTTP ignores
// their case; the protocol must not depend on a sender's spelling.
func TestHeaderNamesIgnoreCase(t *testing.T) {
	h := nats.Header{
		"shoal-method": {"PUT"},
		"SHOAL-PATH":   {"/x"},
		"shoal-query":  {"a=1"},
		"x-a":          {"1"},
		"X-A":          {"2"},
		"nats-msg-id":  {"reserved"},
		"connection":   {"x-private"},
		"x-private":    {"hop"},
	}
	r, err := invocation.NewHTTPRequest(context.Background(), h, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Method != "PUT" || r.URL.Path != "/x" || r.URL.RawQuery != "a=1" {
		t.Errorf("request = %s %s ?%s, want PUT /x ?a=1", r.Method, r.URL.Path, r.URL.RawQuery)
	}
	if got := r.Header["X-A"]; len(got) != 2 {
		t.Errorf("X-A = %v, want both values", got)
	}
	for _, k := range []string{"Nats-Msg-Id", "Connection", "X-Private", "Shoal-Method"} {
		if _, ok := r.Header[k]; ok {
			t.Errorf("%s reached the function", k)
		}
	}

	reply := nats.Header{"shoal-status": {"204"}, "connection": {"close"}, "x-b": {"1"}, "X-B": {"2"}}
	out := http.Header{}
	status, err := invocation.ReadReply(out, reply)
	if err != nil || status != 204 {
		t.Errorf("ReadReply of a lower-case shoal-status 204 = %d, %v", status, err)
	}
	if len(out["X-B"]) != 2 || out.Get("Connection") != "" {
		t.Errorf("copied headers = %v, want X-B twice and no Connection", out)
	}
}

func TestForwardedHostNotSpoofable(t *testing.T) {
	r := httptest.NewRequest("GET", "/function/f", nil)
	r.Host = ""
	r.Header.Set("X-Forwarded-Host", "evil.example")
	msg := invocation.NewRequestMsg("fn.f", r, "", nil)
	if v := msg.Header.Get("X-Forwarded-Host"); v != "" {
		t.Errorf("X-Forwarded-Host = %q from the client, want none", v)
	}
}

func TestAckMessages(t *testing.T) {
	ack := invocation.NewAckMsg("_INBOX.a.1", "RUNNER1")
	if ack.Subject != "_INBOX.a.1" || len(ack.Data) != 0 || ack.Header.Get(invocation.HeaderStatus) != "" {
		t.Errorf("NewAckMsg = %s %v %q", ack.Subject, ack.Header, ack.Data)
	}
	tests := []struct {
		name   string
		msg    *nats.Msg
		runner string // "" when msg is not an ack
	}{
		{"ack", ack, "RUNNER1"},
		{"ack, name in lower case", &nats.Msg{Header: nats.Header{"shoal-ack": {"R2"}}}, "R2"},
		{"answer", invocation.NewResponseMsg("_INBOX.a.1", 200, nil, []byte("pong!")), ""},
		{"empty answer", invocation.NewResponseMsg("_INBOX.a.1", 204, nil, nil), ""},
		{"error answer", invocation.Errorf(504, invocation.CodeTimeout, "slow").Msg("_INBOX.a.1"), ""},
		{"plain responder, nothing at all", &nats.Msg{}, ""},
		{"Shoal-Ack with a status is an answer", &nats.Msg{Header: nats.Header{invocation.HeaderAck: {"R"}, invocation.HeaderStatus: {"200"}}}, ""},
		{"Shoal-Ack with an error code is an answer", &nats.Msg{Header: nats.Header{invocation.HeaderAck: {"R"}, invocation.HeaderServiceErrorCode: {"500"}}}, ""},
		{"Shoal-Ack with data is an answer", &nats.Msg{Header: nats.Header{invocation.HeaderAck: {"R"}}, Data: []byte("x")}, ""},
		{"empty Shoal-Ack", &nats.Msg{Header: nats.Header{invocation.HeaderAck: {""}}}, ""},
		{"no responders status", &nats.Msg{Header: nats.Header{"Status": {"503"}}}, ""},
	}
	for _, tt := range tests {
		runner, ok := invocation.ReadAck(tt.msg)
		if runner != tt.runner || ok != (tt.runner != "") {
			t.Errorf("%s: ReadAck = %q, %v; want %q", tt.name, runner, ok, tt.runner)
		}
	}

	wants := []struct {
		h    nats.Header
		want bool
	}{
		{nats.Header{invocation.HeaderAck: {invocation.AckRequested}}, true},
		{nats.Header{"SHOAL-ACK": {"1"}, "X-Other": {"x"}}, true},
		{nats.Header{invocation.HeaderAck: {"yes"}}, false},
		{nats.Header{"X-Shoal-Ack": {"1"}}, false},
		{nil, false},
	}
	for _, tt := range wants {
		if got := invocation.WantsAck(tt.h); got != tt.want {
			t.Errorf("WantsAck(%v) = %v, want %v", tt.h, got, tt.want)
		}
	}

	// A client cannot ask for acks through the gateway: Shoal-Ack is
	// reserved.
	r := httptest.NewRequest("GET", "/function/f", nil)
	r.Header.Set(invocation.HeaderAck, "1")
	if invocation.WantsAck(invocation.NewRequestMsg("fn.f", r, "", nil).Header) {
		t.Error("a client's Shoal-Ack crossed into the invocation")
	}
}

func TestRunnerLostError(t *testing.T) {
	rec := httptest.NewRecorder()
	invocation.Errorf(502, invocation.CodeRunnerLost, "gone").WriteHTTP(rec)
	// No Retry-After: the function may have run; retrying is the
	// caller's decision, not an invitation.
	if rec.Code != 502 || rec.Header().Get("Retry-After") != "" {
		t.Errorf("runner_lost: %d, Retry-After %q; want 502 and none", rec.Code, rec.Header().Get("Retry-After"))
	}
}

func TestStreamHeaders(t *testing.T) {
	tests := []struct {
		name   string
		h      nats.Header
		accept bool
		part   string
		seq    int
		cancel bool
	}{
		{name: "no header", h: nats.Header{}, seq: -1},
		{name: "accept", h: nats.Header{invocation.HeaderStream: {invocation.StreamAccept}}, accept: true, part: invocation.StreamAccept, seq: -1},
		{name: "accept, name in lower case", h: nats.Header{"shoal-stream": {"accept"}}, accept: true, part: "accept", seq: -1},
		{name: "another value is no accept", h: nats.Header{invocation.HeaderStream: {"yes"}}, part: "yes", seq: -1},
		{name: "start", h: nats.Header{invocation.HeaderStream: {invocation.StreamStart}, invocation.HeaderStreamSeq: {"0"}}, part: invocation.StreamStart, seq: 0},
		{name: "data", h: nats.Header{invocation.HeaderStream: {invocation.StreamData}, "shoal-stream-seq": {"12"}}, part: invocation.StreamData, seq: 12},
		{name: "bad seq", h: nats.Header{invocation.HeaderStream: {invocation.StreamEnd}, invocation.HeaderStreamSeq: {"x"}}, part: invocation.StreamEnd, seq: -1},
		{name: "negative seq", h: nats.Header{invocation.HeaderStreamSeq: {"-2"}}, seq: -1},
		{name: "cancel", h: nats.Header{invocation.HeaderStream: {invocation.StreamCancel}}, part: invocation.StreamCancel, seq: -1, cancel: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := invocation.AcceptsStream(tt.h); got != tt.accept {
				t.Errorf("AcceptsStream = %v", got)
			}
			if got := invocation.StreamPart(tt.h); got != tt.part {
				t.Errorf("StreamPart = %q", got)
			}
			if got := invocation.StreamSeq(tt.h); got != tt.seq {
				t.Errorf("StreamSeq = %d", got)
			}
			if got := invocation.IsStreamCancel(tt.h); got != tt.cancel {
				t.Errorf("IsStreamCancel = %v", got)
			}
		})
	}
}
