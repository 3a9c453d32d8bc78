package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
)

// Availability is where functions are served now.
type Availability struct {
	// Runners counts, by function, the runners serving it.
	Runners map[string]int
	// Unservable lists, by function, the runners that cannot serve it,
	// each as "runner ID (host): why".
	Unservable map[string][]string
}

// Serving asks every runner through NATS services discovery (INFO) which
// functions it serves and which it cannot; see invocation.Discover for
// how long it waits.
func Serving(ctx context.Context, nc *nats.Conn, wait time.Duration) (Availability, error) {
	msgs, err := invocation.Discover(ctx, nc, micro.InfoVerb, wait)
	if err != nil {
		return Availability{}, fmt.Errorf("catalog: %w", err)
	}
	av := Availability{Runners: map[string]int{}, Unservable: map[string][]string{}}
	runners := map[string]map[string]bool{} // function → runner ids
	seen := map[string]bool{}               // runner ids whose unservable functions are counted
	for _, msg := range msgs {
		var info micro.Info
		if json.Unmarshal(msg.Data, &info) != nil {
			continue
		}
		id := invocation.RunnerID(info.ServiceIdentity)
		var unservable map[string]string
		if s := info.Metadata[invocation.UnservableMetadata]; s != "" && !seen[id] && json.Unmarshal([]byte(s), &unservable) == nil {
			seen[id] = true
			who := "runner " + id
			if host := info.Metadata["host"]; host != "" {
				who += " (" + host + ")"
			}
			for name, why := range unservable {
				av.Unservable[name] = append(av.Unservable[name], who+": "+why)
			}
		}
		for _, ep := range info.Endpoints {
			name, ok := strings.CutPrefix(ep.Subject, invocation.SubjectPrefix)
			if !ok {
				continue
			}
			if runners[name] == nil {
				runners[name] = map[string]bool{}
			}
			runners[name][id] = true
		}
	}
	for name, ids := range runners {
		av.Runners[name] = len(ids)
	}
	for _, whys := range av.Unservable {
		slices.Sort(whys)
	}
	return av, nil
}

// FunctionStatus is a deployed function as GET /system/functions and
// `shoal list` show it.
type FunctionStatus struct {
	manifest.Spec
	// Revision is the catalog revision of this definition; 0 for a
	// function served from a file rather than the catalog.
	Revision uint64    `json:"revision"`
	Deployed time.Time `json:"deployed,omitzero"`
	// Runners counts the runners serving the function now; 0 means no
	// runner can serve it, and invoking it answers 503 no_runner.
	Runners int `json:"runners"`
	// Unservable lists the runners that cannot serve the function, with
	// why (its runtime is missing there, its code cannot be fetched, its
	// processes do not start).
	Unservable []string `json:"unservable,omitempty"`
}

// Describe pairs each entry with where it is served.
func Describe(entries []Entry, av Availability) []FunctionStatus {
	out := make([]FunctionStatus, 0, len(entries))
	for _, e := range entries {
		name := e.Function.Name
		out = append(out, FunctionStatus{Spec: e.Function.Spec(), Revision: e.Revision, Deployed: e.Deployed,
			Runners: av.Runners[name], Unservable: av.Unservable[name]})
	}
	return out
}
