// Package metrics holds the relay's Prometheus metrics and the HTTP handler
// that serves them with /healthz. Every metric is named relay_...; the Go
// runtime and process collectors are not registered.
//
// The recording methods are safe on a nil *Registry, so packages that take
// an optional Registry need no nil checks.
package metrics

import (
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Delivery outcomes for Delivery.
const (
	Delivered = "delivered"
	Deferred  = "deferred"
	Bounced   = "bounced"
)

// Registry is one relay's set of metrics.
type Registry struct {
	reg          *prometheus.Registry
	accepted     prometheus.Counter
	rejected     *prometheus.CounterVec
	deliveries   *prometheus.CounterVec
	latency      prometheus.Histogram
	sessions     *prometheus.CounterVec
	active       *prometheus.GaugeVec
	authFailures *prometheus.CounterVec
}

// QueueStats reports the queue's size and the arrival time of its oldest
// message (zero when empty); it is called at scrape time.
type QueueStats func() (messages int, oldest time.Time, err error)

// New returns a registry with every relay metric registered. queue, when
// non-nil, feeds relay_queue_messages and relay_queue_oldest_age_seconds.
func New(queue QueueStats) *Registry {
	r := &Registry{
		reg: prometheus.NewRegistry(),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_messages_accepted_total",
			Help: "Messages accepted into the queue from clients (SMTP, submission, sendmail).",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_messages_rejected_total",
			Help: "Senders, recipients or messages refused at SMTP ingress, by reason.",
		}, []string{"reason"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_deliveries_total",
			Help: "Delivery attempt results per recipient, by outcome (delivered, deferred, bounced).",
		}, []string{"outcome"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "relay_delivery_latency_seconds",
			Help: "Time from a message's arrival to a recipient's delivery.",
			// 1 ms to about 4.5 days.
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 15),
		}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_sessions_total",
			Help: "Client connections accepted, by protocol (smtp, submission, submissions, imap, imaps).",
		}, []string{"listener"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relay_sessions_active",
			Help: "Client connections open now, by listener.",
		}, []string{"listener"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_auth_failures_total",
			Help: "Failed authentication attempts, by protocol (smtp, imap).",
		}, []string{"proto"}),
	}
	r.reg.MustRegister(r.accepted, r.rejected, r.deliveries, r.latency, r.sessions, r.active, r.authFailures)
	if queue != nil {
		r.reg.MustRegister(queueCollector{queue,
			prometheus.NewDesc("relay_queue_messages", "Messages in the queue.", nil, nil),
			prometheus.NewDesc("relay_queue_oldest_age_seconds", "Age of the oldest message in the queue (0 when empty).", nil, nil),
		})
	}
	return r
}

// queueCollector reads the queue once per scrape for both gauges.
type queueCollector struct {
	stats     QueueStats
	size, age *prometheus.Desc
}

func (c queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.size; ch <- c.age }

func (c queueCollector) Collect(ch chan<- prometheus.Metric) {
	n, oldest, err := c.stats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.size, err)
		return
	}
	age := 0.0
	if !oldest.IsZero() {
		age = max(time.Since(oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
}

// Accepted counts one message taken into the queue.
func (r *Registry) Accepted() {
	if r != nil {
		r.accepted.Inc()
	}
}

// Rejected counts one refusal for reason (a short, fixed phrase: the label
// must not carry client data).
func (r *Registry) Rejected(reason string) {
	if r != nil {
		r.rejected.WithLabelValues(reason).Inc()
	}
}

// Delivery counts one recipient's attempt result (Delivered, Deferred,
// Bounced); a delivery also records its latency since arrival.
func (r *Registry) Delivery(outcome string, sinceArrival time.Duration) {
	if r == nil {
		return
	}
	r.deliveries.WithLabelValues(outcome).Inc()
	if outcome == Delivered {
		r.latency.Observe(sinceArrival.Seconds())
	}
}

// AuthFailure counts one failed authentication on proto (smtp, imap).
func (r *Registry) AuthFailure(proto string) {
	if r != nil {
		r.authFailures.WithLabelValues(proto).Inc()
	}
}

// Listener counts the connections l accepts, in total and open, under the
// listener's name. A nil registry returns l unchanged.
func (r *Registry) Listener(l net.Listener, name string) net.Listener {
	if r == nil {
		return l
	}
	return &countingListener{Listener: l, total: r.sessions.WithLabelValues(name), open: r.active.WithLabelValues(name)}
}

type countingListener struct {
	net.Listener
	total prometheus.Counter
	open  prometheus.Gauge
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.total.Inc()
	l.open.Inc()
	return &countedConn{Conn: c, open: l.open}, nil
}

type countedConn struct {
	net.Conn
	open prometheus.Gauge
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(c.open.Dec)
	return c.Conn.Close()
}

// Gatherer exposes the registry (for tests).
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Handler serves /metrics from r and /healthz, which answers 200 "ok" when
// healthy returns nil and 503 with the error otherwise.
func Handler(r *Registry, healthy func() error, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{ErrorLog: slogAdapter{log}}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := healthy(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("unhealthy: " + err.Error() + "\n"))
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}

type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Println(v ...any) {
	if a.log != nil {
		a.log.Error("metrics", "error", v)
	}
}
