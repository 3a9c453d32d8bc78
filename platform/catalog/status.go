package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/shoal-dev/shoal/invocation"
	"github.com/shoal-dev/shoal/manifest"
)

// Serving counts, for each function, the runners serving it now, asking
// every runner through NATS services discovery (INFO); see
// invocation.Discover for how long it waits.
func Serving(ctx context.Context, nc *nats.Conn, wait time.Duration) (map[string]int, error) {
	msgs, err := invocation.Discover(ctx, nc, micro.InfoVerb, wait)
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	runners := map[string]map[string]bool{} // function → runner ids
	for _, msg := range msgs {
		var info micro.Info
		if json.Unmarshal(msg.Data, &info) != nil {
			continue
		}
		id := invocation.RunnerID(info.ServiceIdentity)
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
	out := make(map[string]int, len(runners))
	for name, ids := range runners {
		out[name] = len(ids)
	}
	return out, nil
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
}

// Describe pairs each entry with the number of runners serving it.
func Describe(entries []Entry, serving map[string]int) []FunctionStatus {
	out := make([]FunctionStatus, 0, len(entries))
	for _, e := range entries {
		out = append(out, FunctionStatus{Spec: e.Function.Spec(), Revision: e.Revision, Deployed: e.Deployed, Runners: serving[e.Function.Name]})
	}
	return out
}
