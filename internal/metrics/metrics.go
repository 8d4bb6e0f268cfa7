// Package metrics holds the relay's Prometheus metrics and the HTTP handler
// that serves them with /healthz. Every metric is named relay_...; the Go
// runtime and process collectors are not registered.
//
// The recording methods are safe on a nil *Registry, so packages that take
// an optional Registry need no nil checks.
package metrics

import (
	"log/slog"
	"net/http"

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
	smtpSessions prometheus.Counter
	authFailures prometheus.Counter
}

// New returns a registry with every relay metric registered. queueSize,
// when non-nil, is called at scrape time for relay_queue_messages.
func New(queueSize func() (int, error)) *Registry {
	r := &Registry{
		reg: prometheus.NewRegistry(),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_messages_accepted_total",
			Help: "Messages accepted into the queue (SMTP and sendmail).",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_messages_rejected_total",
			Help: "Senders, recipients or messages refused at SMTP ingress, by reason.",
		}, []string{"reason"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_deliveries_total",
			Help: "Delivery attempt results per recipient, by outcome (delivered, deferred, bounced).",
		}, []string{"outcome"}),
		smtpSessions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_smtp_sessions_total",
			Help: "SMTP sessions started.",
		}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relay_auth_failures_total",
			Help: "Failed SMTP AUTH attempts.",
		}),
	}
	r.reg.MustRegister(r.accepted, r.rejected, r.deliveries, r.smtpSessions, r.authFailures)
	if queueSize != nil {
		r.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "relay_queue_messages",
			Help: "Messages in the queue.",
		}, func() float64 {
			n, err := queueSize()
			if err != nil {
				return -1
			}
			return float64(n)
		}))
	}
	return r
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
// Bounced).
func (r *Registry) Delivery(outcome string) {
	if r != nil {
		r.deliveries.WithLabelValues(outcome).Inc()
	}
}

// SMTPSession counts one SMTP session.
func (r *Registry) SMTPSession() {
	if r != nil {
		r.smtpSessions.Inc()
	}
}

// AuthFailure counts one failed AUTH.
func (r *Registry) AuthFailure() {
	if r != nil {
		r.authFailures.Inc()
	}
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
