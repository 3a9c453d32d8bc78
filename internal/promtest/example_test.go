package promtest_test

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoal-dev/shoal/internal/promtest"
)

func ExampleFamilies_Value() {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "requests_total", Help: "Requests."}, []string{"code"})
	reg.MustRegister(c)
	c.WithLabelValues("200").Add(3)
	f := promtest.Gather(&testing.T{}, reg)
	v, ok := f.Value("requests_total", "code", "200")
	fmt.Println(v, ok)
	_, ok = f.Value("requests_total", "code", "500")
	fmt.Println(ok)
	// Output:
	// 3 true
	// false
}
