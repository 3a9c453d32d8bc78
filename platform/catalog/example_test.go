package catalog_test

import (
	"context"
	"fmt"
	"time"

	"github.com/shoal-dev/shoal/manifest"
	"github.com/shoal-dev/shoal/platform/broker/brokertest"
	"github.com/shoal-dev/shoal/platform/catalog"
)

// Deploying writes what changed and nothing else; with prune, functions
// no longer declared are removed. Every change carries the catalog
// revision it made.
func ExampleCatalog_Deploy() {
	_, js, stop, err := brokertest.ForExample()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, err := catalog.Create(ctx, js, 1)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, src := range []string{
		"version: 1\nfunctions:\n  ping: {handler: {builtin: ping}, public: true}\n  pong: {handler: {builtin: ping}, public: true}\n",
		"version: 1\nfunctions:\n  ping: {handler: {builtin: ping}, public: true, timeout: 5s}\n",
	} {
		m, err := manifest.Parse("fn.yaml", []byte(src), manifest.Options{Builtins: []string{"ping"}})
		if err != nil {
			fmt.Println(err)
			return
		}
		changes, err := c.Deploy(ctx, m.Functions, true)
		if err != nil {
			fmt.Println(err)
			return
		}
		for _, ch := range changes {
			fmt.Println(ch.Name, ch.Action, ch.Revision)
		}
	}
	// Output:
	// ping created 1
	// pong created 2
	// ping updated 3
	// pong removed 4
}
