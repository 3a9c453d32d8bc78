package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/nats-io/nats.go"

	"github.com/shoal-dev/shoal/functions/functionstest"
	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/gateway"
	"github.com/shoal-dev/shoal/platform/runner"
	"github.com/shoal-dev/shoal/platform/runner/runnertest"
	"github.com/shoal-dev/shoal/platform/traffic"
	"github.com/shoal-dev/shoal/token"
	"github.com/shoal-dev/shoal/token/tokentest"
)

// fleet is several gateways on one NATS server, as a Kubernetes
// deployment runs them behind a load balancer, and one runner.
type fleet struct {
	broker   *broker.Server
	gateways []*fleetGateway
	// read mints system:read tokens every gateway accepts.
	read func() string
	// connect opens a test connection to the server, as the admin on a
	// secured one.
	connect func(opts ...nats.Option) *nats.Conn
}

// fleetGateway is one gateway of a fleet.
type fleetGateway struct {
	url string
	g   *gateway.Gateway
	// violations are the permission violations its connection saw.
	mu         sync.Mutex
	violations []error
	// shutdown shuts it down, once.
	shutdown func(t testing.TB)
}

// fleetOptions vary a fleet.
type fleetOptions struct {
	gateways int
	// secured runs the server with the role identities, each gateway on
	// the gateway role and the runner on the runner role.
	secured bool
}

// startFleet starts a fleet that stops when the test ends.
func startFleet(t testing.TB, o fleetOptions) *fleet {
	t.Helper()
	f := &fleet{}
	var creds *broker.Credentials
	if o.secured {
		f.broker, creds = brokertest.StartSecured(t)
	} else {
		f.broker = brokertest.Start(t)
	}
	f.connect = func(opts ...nats.Option) *nats.Conn {
		if creds != nil {
			return brokertest.ConnectAs(t, f.broker, creds, broker.RoleAdmin, opts...)
		}
		return brokertest.Connect(t, f.broker, opts...)
	}
	fns := functionstest.Builtins(nil)
	m, err := manifest.Parse("test.yaml", []byte(testManifest), manifest.Options{Builtins: append(slices.Collect(maps.Keys(fns)), "block", "counter", "orphan", "silent")})
	if err != nil {
		t.Fatal(err)
	}
	var runnerOpts []nats.Option
	if creds != nil {
		seed, err := nats.NkeyOptionFromSeed(creds.SeedFile(broker.RoleRunner))
		if err != nil {
			t.Fatal(err)
		}
		runnerOpts = []nats.Option{seed, nats.CustomInboxPrefix(broker.InboxPrefix(broker.RoleRunner))}
	}
	runnertest.Start(t, f.broker.ClientURL(), runner.Config{Manifest: m, Builtins: fns}, runnerOpts...)

	key := tokenKey(t)
	f.read = func() string { return tokentest.Bearer(t, key, "ops")(gateway.DefaultSystemPermission) }
	for range o.gateways {
		fg := &fleetGateway{}
		opts := []nats.Option{nats.ReconnectBufSize(-1), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				fg.mu.Lock()
				fg.violations = append(fg.violations, err)
				fg.mu.Unlock()
			}
		})}
		var nc *nats.Conn
		if creds != nil {
			nc = brokertest.ConnectAs(t, f.broker, creds, broker.RoleGateway, opts...)
		} else {
			nc = brokertest.Connect(t, f.broker, opts...)
		}
		fg.g, err = gateway.New(gateway.Config{NATS: nc, Manifest: m, Verifier: verifierOf(t, key)})
		if err != nil {
			t.Fatal(err)
		}
		fg.url, fg.shutdown = serveOnce(t, fg.g)
		f.gateways = append(f.gateways, fg)
	}
	return f
}

// The fleet's signing key, and verifiers of it: every gateway accepts
// the same tokens.
func tokenKey(t testing.TB) jwkset.JWK {
	t.Helper()
	key, _ := tokentest.Key(t)
	return key
}

func verifierOf(t testing.TB, key jwkset.JWK) *token.Verifier {
	t.Helper()
	keys, err := token.StaticKeys(key)
	if err != nil {
		t.Fatal(err)
	}
	v, err := token.NewVerifier(token.VerifierConfig{Issuers: []token.Issuer{{Issuer: "shoal", Audience: "shoal", Keys: keys}}})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// serveOnce is serve with a shutdown a test may call before the end.
func serveOnce(t testing.TB, g *gateway.Gateway) (string, func(testing.TB)) {
	t.Helper()
	url := serve(t, g)
	var once sync.Once
	return url, func(t testing.TB) {
		once.Do(func() {
			http.DefaultClient.CloseIdleConnections()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := g.Shutdown(ctx); err != nil {
				t.Errorf("gateway shutdown: %v", err)
			}
		})
	}
}

// call invokes fn at a gateway n times.
func (fg *fleetGateway) call(t testing.TB, fn string, n int) {
	t.Helper()
	for range n {
		do(t, newRequest(t, "GET", fg.url+"/function/"+fn, nil))
	}
}

// fleetStats is the JSON of GET /system/stats, with the fleet's fields.
type fleetStats struct {
	Now       time.Time `json:"now"`
	Gateways  int       `json:"gateways"`
	Partial   bool      `json:"partial"`
	Functions []struct {
		Name   string       `json:"name"`
		Total  statsFigures `json:"total"`
		Series []struct {
			T time.Time `json:"t"`
			statsFigures
		} `json:"series"`
	} `json:"functions"`
}

// stats reads GET /system/stats?window=60&step=10 at a gateway, and how
// long it took.
func (fg *fleetGateway) stats(t testing.TB, authorization string) (fleetStats, time.Duration) {
	t.Helper()
	req := newRequest(t, "GET", fg.url+"/system/stats?window=60&step=10", nil)
	req.Header.Set("Authorization", authorization)
	start := time.Now()
	resp := do(t, req)
	took := time.Since(start)
	if resp.status != 200 {
		t.Fatalf("GET /system/stats: %d %s", resp.status, resp.body)
	}
	var s fleetStats
	if err := json.Unmarshal([]byte(resp.body), &s); err != nil {
		t.Fatalf("%v in %s", err, resp.body)
	}
	return s, took
}

// totals are the requests, errors and client errors of each function
// with requests.
func (s fleetStats) totals() map[string][3]uint64 {
	out := map[string][3]uint64{}
	for _, fn := range s.Functions {
		if tot := fn.Total; tot.Requests > 0 {
			out[fn.Name] = [3]uint64{tot.Requests, tot.Errors, tot.ClientErrors}
		}
	}
	return out
}

// checkConsistent checks what holds of any answer: each function's steps
// add up to its total, and its percentiles are ordered.
func (s fleetStats) checkConsistent(t testing.TB) {
	t.Helper()
	for _, fn := range s.Functions {
		var sum uint64
		for _, p := range fn.Series {
			sum += p.Requests
			if p.Requests > 0 && (p.P50 <= 0 || p.P99 < p.P50) {
				t.Errorf("%s at %s: p50 %v ms, p99 %v ms", fn.Name, p.T, p.P50, p.P99)
			}
		}
		if sum != fn.Total.Requests {
			t.Errorf("%s: the steps hold %d requests, the total %d", fn.Name, sum, fn.Total.Requests)
		}
		if tot := fn.Total; tot.Requests > 0 && (tot.P50 <= 0 || tot.P99 < tot.P50) {
			t.Errorf("%s: p50 %v ms, p99 %v ms", fn.Name, tot.P50, tot.P99)
		}
	}
}

// traffic sends 3 pings, 2 teapots (418) and a panic (500) to the first
// gateway and 5 pings and 2 panics to the second: the fleet's totals are
// fleetTotals.
func (f *fleet) traffic(t testing.TB) {
	t.Helper()
	a, b := f.gateways[0], f.gateways[1]
	a.call(t, "ping", 3)
	a.call(t, "teapot", 2)
	a.call(t, "panic", 1)
	b.call(t, "ping", 5)
	b.call(t, "panic", 2)
}

var (
	fleetTotals = map[string][3]uint64{"ping": {8, 0, 0}, "teapot": {2, 0, 2}, "panic": {3, 3, 0}}
	firstTotals = map[string][3]uint64{"ping": {3, 0, 0}, "teapot": {2, 0, 2}, "panic": {1, 1, 0}}
)

// TestFleetStats: with two gateways on one NATS system, GET
// /system/stats at either answers the figures of both, merged exactly:
// the same requests, errors, client errors and percentiles.
func TestFleetStats(t *testing.T) {
	for _, secured := range []bool{false, true} {
		name := "open server"
		if secured {
			name = "roles' permissions"
		}
		t.Run(name, func(t *testing.T) {
			f := startFleet(t, fleetOptions{gateways: 2, secured: secured})
			f.traffic(t)
			read := f.read()
			var answers []fleetStats
			for i, fg := range f.gateways {
				s, took := fg.stats(t, read)
				t.Logf("gateway %d answered in %s", i, took)
				if s.Gateways != 2 || s.Partial {
					t.Errorf("gateway %d: %d gateways, partial %v; want 2, not partial", i, s.Gateways, s.Partial)
				}
				if got := s.totals(); !maps.Equal(got, fleetTotals) {
					t.Errorf("gateway %d: requests, errors, client errors %v; want %v", i, got, fleetTotals)
				}
				s.checkConsistent(t)
				answers = append(answers, s)
			}
			// Both answer the same figures: the percentiles too.
			a, b := answers[0], answers[1]
			for i := range a.Functions {
				fa, fb := a.Functions[i], b.Functions[i]
				if fa.Name != fb.Name || fa.Total.P50 != fb.Total.P50 || fa.Total.P99 != fb.Total.P99 {
					t.Errorf("%s: p50 %v, p99 %v at one gateway; %s: p50 %v, p99 %v at the other",
						fa.Name, fa.Total.P50, fa.Total.P99, fb.Name, fb.Total.P50, fb.Total.P99)
				}
			}
			for _, fg := range f.gateways {
				fg.mu.Lock()
				if len(fg.violations) > 0 {
					t.Errorf("permission violations: %v", fg.violations)
				}
				fg.mu.Unlock()
			}

			// A gateway shut down is counted no more.
			f.gateways[1].shutdown(t)
			s, _ := f.gateways[0].stats(t, read)
			if s.Gateways != 1 || s.Partial {
				t.Errorf("after the other's shutdown: %d gateways, partial %v; want 1, not partial", s.Gateways, s.Partial)
			}
			if got := s.totals(); !maps.Equal(got, firstTotals) {
				t.Errorf("after the other's shutdown: %v; want the first gateway's own, %v", got, firstTotals)
			}
		})
	}
}

// TestFleetStatsBadReplies: a reply that is not a gateway's counts, or
// counts that break their rules, is left out: the answer is the figures
// of the gateways that did answer, exact, marked partial.
func TestFleetStatsBadReplies(t *testing.T) {
	f := startFleet(t, fleetOptions{gateways: 2})
	f.traffic(t)
	read := f.read()
	// Valid counts of a function not deployed.
	r := traffic.New()
	r.Series("nope").Observe(time.Now(), 200, time.Millisecond)
	nope, err := r.Counts([]string{"nope"}, time.Minute, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	nopeJSON, err := nope.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	// Counts that claim a huge number of pings, in a bucket out of range.
	badBucket := func(now time.Time) []byte {
		step := now.Unix() - now.Unix()%10
		return fmt.Appendf(nil, `{"now":%q,"window":60,"step":10,"functions":[{"name":"ping","steps":[{"t":%d,"lo":1,"hi":1,"b":99,"h":[1000000]}]}]}`,
			now.UTC().Format(time.RFC3339), step)
	}
	evil := nats.Header{gateway.HeaderGateway: {"evil"}}
	tests := []struct {
		name  string
		reply func(req *nats.Msg) *nats.Msg
	}{
		{"not JSON", func(*nats.Msg) *nats.Msg { return &nats.Msg{Header: evil, Data: []byte("garbage")} }},
		{"no gateway id", func(*nats.Msg) *nats.Msg { return &nats.Msg{Data: nopeJSON} }},
		{"a bucket out of range", func(*nats.Msg) *nats.Msg { return &nats.Msg{Header: evil, Data: badBucket(time.Now())} }},
		{"another window", func(*nats.Msg) *nats.Msg {
			c, _ := r.Counts([]string{"ping"}, 10*time.Second, time.Second)
			data, _ := c.MarshalJSON()
			return &nats.Msg{Header: evil, Data: data}
		}},
		{"a function not asked for", func(*nats.Msg) *nats.Msg { return &nats.Msg{Header: evil, Data: nopeJSON} }},
		{"an error", func(*nats.Msg) *nats.Msg {
			return &nats.Msg{Header: nats.Header{gateway.HeaderGateway: {"evil"}, gateway.HeaderStatsError: {"too large"}}}
		}},
	}
	nc := f.connect()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub, err := nc.Subscribe(gateway.StatsSubject, func(req *nats.Msg) {
				m := tt.reply(req)
				m.Subject = req.Reply
				_ = nc.PublishMsg(m)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			for i, fg := range f.gateways {
				s, _ := fg.stats(t, read)
				if s.Gateways != 2 || !s.Partial {
					t.Errorf("gateway %d: %d gateways, partial %v; want 2, partial", i, s.Gateways, s.Partial)
				}
				if got := s.totals(); !maps.Equal(got, fleetTotals) {
					t.Errorf("gateway %d: %v; want %v", i, got, fleetTotals)
				}
				s.checkConsistent(t)
			}
		})
	}
	// Without the bad replier, the answer is whole again.
	if s, _ := f.gateways[0].stats(t, read); s.Gateways != 2 || s.Partial {
		t.Errorf("%d gateways, partial %v; want 2, not partial", s.Gateways, s.Partial)
	}
}

// TestStatsProtocol: the exchange as docs/nats-api.md describes it, seen
// by a NATS client: each gateway answers a request on shoal.stats with
// its own counts, under its id; or, when it cannot, with an error header.
func TestStatsProtocol(t *testing.T) {
	f := startFleet(t, fleetOptions{gateways: 2})
	f.traffic(t)
	nc := f.connect()
	ask := func(t *testing.T, reply string, data []byte) []*nats.Msg {
		t.Helper()
		sub, err := nc.SubscribeSync(reply)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		if err := nc.PublishRequest(gateway.StatsSubject, reply, data); err != nil {
			t.Fatal(err)
		}
		var out []*nats.Msg
		for {
			m, err := sub.NextMsg(300 * time.Millisecond)
			if err != nil {
				return out
			}
			out = append(out, m)
		}
	}
	req, err := json.Marshal(gateway.StatsRequest{Functions: []string{"ping", "panic"}, Window: 60, Step: 10})
	if err != nil {
		t.Fatal(err)
	}
	many := gateway.StatsRequest{Window: 60, Step: 10}
	for i := range 1000 {
		many.Functions = append(many.Functions, fmt.Sprintf("function-%04d", i))
	}
	manyJSON, err := json.Marshal(many)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("counts", func(t *testing.T) {
		msgs := ask(t, gateway.StatsReplyPrefix+"t1", req)
		var got []string
		ids := map[string]bool{}
		for _, m := range msgs {
			ids[m.Header.Get(gateway.HeaderGateway)] = true
			var c traffic.Counts
			if err := json.Unmarshal(m.Data, &c); err != nil {
				t.Fatalf("reply %q: %v", m.Data, err)
			}
			snap := c.Snapshot()
			var fns []string
			for _, fs := range snap.Functions {
				fns = append(fns, fmt.Sprintf("%s %d/%d", fs.Name, fs.Total.Requests, fs.Total.Errors))
			}
			got = append(got, strings.Join(fns, ", "))
		}
		slices.Sort(got)
		if want := []string{"panic 1/1, ping 3/0", "panic 2/2, ping 5/0"}; !slices.Equal(got, want) {
			t.Errorf("replies %q, want %q", got, want)
		}
		if len(ids) != 2 || ids[""] {
			t.Errorf("gateway ids %v, want two", ids)
		}
	})
	tests := []struct {
		name, reply string
		data        []byte
		errorHeader string // in both replies; "" for no reply at all
	}{
		{"a reply subject outside shoal.stats.reply.", "elsewhere.t2", req, ""},
		{"no reply subject", "", req, ""},
		{"a malformed request", gateway.StatsReplyPrefix + "t3", []byte("{"), "malformed stats request"},
		{"a bad window", gateway.StatsReplyPrefix + "t4", []byte(`{"functions":["ping"],"window":61,"step":10}`), "bad stats window"},
		{"a window that overflows", gateway.StatsReplyPrefix + "t5", []byte(`{"functions":["ping"],"window":9223372036,"step":10}`), "bad stats window"},
		// The test server's max_payload is 9 MiB: 1,000 functions fit.
		{"counts of many functions", gateway.StatsReplyPrefix + "t6", manyJSON, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			listen := tt.reply
			if listen == "" {
				listen = gateway.StatsReplyPrefix + ">"
			}
			sub, err := nc.SubscribeSync(listen)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			if err := nc.PublishMsg(&nats.Msg{Subject: gateway.StatsSubject, Reply: tt.reply, Data: tt.data}); err != nil {
				t.Fatal(err)
			}
			var msgs []*nats.Msg
			for {
				m, err := sub.NextMsg(300 * time.Millisecond)
				if err != nil {
					break
				}
				msgs = append(msgs, m)
			}
			switch {
			case tt.name == "counts of many functions":
				for _, m := range msgs {
					var c traffic.Counts
					if err := json.Unmarshal(m.Data, &c); err != nil || len(c.Functions()) != 1000 {
						t.Errorf("reply of %d bytes: %v", len(m.Data), err)
					}
				}
				if len(msgs) != 2 {
					t.Errorf("%d replies, want 2", len(msgs))
				}
			case tt.errorHeader == "":
				if len(msgs) != 0 {
					t.Errorf("%d replies, want none", len(msgs))
				}
			default:
				if len(msgs) != 2 {
					t.Fatalf("%d replies, want 2", len(msgs))
				}
				for _, m := range msgs {
					if e := m.Header.Get(gateway.HeaderStatsError); !strings.Contains(e, tt.errorHeader) || len(m.Data) != 0 {
						t.Errorf("reply %q, error %q; want no data and an error saying %q", m.Data, e, tt.errorHeader)
					}
				}
			}
		})
	}
}

// TestStatsReplyTooLarge: a gateway whose counts would not fit in a NATS
// message says so instead, and the gateway that asked answers the others'
// figures, partial.
func TestStatsReplyTooLarge(t *testing.T) {
	// 4 KiB messages: the counts of the test manifest's 9 functions, with
	// a few steps each, fit in the 3 KiB left after the headers' room;
	// those of 200 functions, even without traffic, do not (17 bytes
	// each), though the request does.
	p := start(t, options{tokens: true, maxPayload: 4 << 10})
	nc, err := nats.Connect(p.broker.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	many := gateway.StatsRequest{Window: 60, Step: 10}
	for i := range 200 {
		many.Functions = append(many.Functions, fmt.Sprintf("f-%03d", i))
	}
	data, err := json.Marshal(many)
	if err != nil {
		t.Fatal(err)
	}
	replies, err := nc.SubscribeSync(gateway.StatsReplyPrefix + "t1")
	if err != nil {
		t.Fatal(err)
	}
	// The gateway may still be subscribing to shoal.stats: no responders
	// then, and the request is sent again (for at most 5 s).
	var reply *nats.Msg
	for deadline := time.Now().Add(5 * time.Second); ; {
		if err := nc.PublishRequest(gateway.StatsSubject, replies.Subject, data); err != nil {
			t.Fatal(err)
		}
		reply, err = replies.NextMsg(5 * time.Second)
		if !errors.Is(err, nats.ErrNoResponders) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if e := reply.Header.Get(gateway.HeaderStatsError); !strings.Contains(e, "max_payload") || len(reply.Data) != 0 {
		t.Errorf("reply %q, error %q; want no data and an error naming max_payload", reply.Data, e)
	}
	for _, fn := range []string{"ping", "teapot", "panic", "echo"} {
		do(t, newRequest(t, "GET", p.url+"/function/"+fn, nil))
	}
	bearer := tokentest.Bearer(t, p.key, "ops")("system:read")
	fg := &fleetGateway{url: p.url}
	if s, _ := fg.stats(t, bearer); s.Gateways != 1 || s.Partial || len(s.totals()) != 4 {
		t.Errorf("alone: %d gateways, partial %v, %v", s.Gateways, s.Partial, s.totals())
	}
	// Another gateway whose counts do not fit answers an error: the gateway that asked marks its answer partial.
	sub, err := nc.Subscribe(gateway.StatsSubject, func(m *nats.Msg) {
		_ = nc.PublishMsg(&nats.Msg{Subject: m.Reply, Header: nats.Header{
			gateway.HeaderGateway: {"big"}, gateway.HeaderStatsError: {reply.Header.Get(gateway.HeaderStatsError)}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if s, _ := fg.stats(t, bearer); s.Gateways != 1 || !s.Partial || len(s.totals()) != 4 {
		t.Errorf("beside a gateway whose counts do not fit: %d gateways, partial %v, %v; want 1, partial", s.Gateways, s.Partial, s.totals())
	}
}

// TestFleetStatsNATSDown: with NATS unreachable, a gateway answers its
// own figures at once, marked partial.
func TestFleetStatsNATSDown(t *testing.T) {
	t.Parallel()
	p := start(t, options{tokens: true})
	for range 3 {
		do(t, newRequest(t, "GET", p.url+"/function/ping", nil))
	}
	p.broker.Shutdown()
	<-p.disconnected
	fg := &fleetGateway{url: p.url}
	s, took := fg.stats(t, tokentest.Bearer(t, p.key, "ops")("system:read"))
	if s.Gateways != 1 || !s.Partial {
		t.Errorf("%d gateways, partial %v; want 1, partial", s.Gateways, s.Partial)
	}
	if got := s.totals(); !maps.Equal(got, map[string][3]uint64{"ping": {3, 0, 0}}) {
		t.Errorf("figures %v, want the gateway's own 3 pings", got)
	}
	if took > 300*time.Millisecond {
		t.Errorf("answered in %s; with NATS down there is no one to wait for", took)
	}
}

// TestFleetStatsFlood: a flood of replies under made-up gateway ids is
// merged up to the most gateways one answer takes, and marks it partial.
func TestFleetStatsFlood(t *testing.T) {
	f := startFleet(t, fleetOptions{gateways: 1})
	r := traffic.New()
	r.Series("ping").Observe(time.Now(), 200, time.Millisecond)
	nc := f.connect()
	sub, err := nc.Subscribe(gateway.StatsSubject, func(req *nats.Msg) {
		var q gateway.StatsRequest
		if err := json.Unmarshal(req.Data, &q); err != nil {
			t.Error(err)
			return
		}
		c, err := r.Counts(q.Functions, time.Duration(q.Window)*time.Second, time.Duration(q.Step)*time.Second)
		if err != nil {
			t.Error(err)
			return
		}
		data, _ := c.MarshalJSON()
		for i := range 300 {
			_ = nc.PublishMsg(&nats.Msg{Subject: req.Reply, Header: nats.Header{gateway.HeaderGateway: {fmt.Sprint("fake-", i)}}, Data: data})
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	s, _ := f.gateways[0].stats(t, f.read())
	if s.Gateways != 256 || !s.Partial {
		t.Errorf("%d gateways, partial %v; want 256 (255 others at most), partial", s.Gateways, s.Partial)
	}
}
