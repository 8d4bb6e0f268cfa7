package deliver

import (
	"bytes"
	"slices"
	"strings"
	"time"

	"github.com/relaymail/relay/relay/dsn"
	"github.com/relaymail/relay/spool"
)

// wants reports whether a recipient's NOTIFY asks for kind (SUCCESS,
// FAILURE or DELAY). Without NOTIFY the default is FAILURE and DELAY, as
// Postfix and most MTAs have it (RFC 3461 §4.1 leaves DELAY to the MTA).
func wants(rc spool.Recipient, kind string) bool {
	if len(rc.Notify) == 0 {
		return kind != "SUCCESS"
	}
	return slices.ContainsFunc(rc.Notify, func(n string) bool { return strings.EqualFold(n, kind) })
}

// notifyTxn queues, inside tx, the delivery status notifications that
// reports call for: one message per kind (failed, delayed, delivered). It
// never writes to the null sender, so bounces cannot loop.
func (l *Loop) notifyTxn(tx *spool.Tx, m *spool.Message, reports []report, now time.Time) {
	if len(reports) == 0 {
		return
	}
	if m.From == "" {
		l.log.Info("no notice", "id", m.ID, "reason", "null sender")
		return
	}
	groups := map[dsn.Action][]dsn.Recipient{}
	for _, rep := range reports {
		rc := m.Rcpts[rep.i]
		r := dsn.Recipient{Address: rc.Address, ORcpt: rc.ORcpt, Reply: rc.Reply, RemoteMTA: rc.RemoteMTA, LastAttempt: now}
		switch {
		case rc.State == spool.Failed:
			if !wants(rc, "FAILURE") {
				continue
			}
			r.Action, r.Expired = dsn.Failed, rep.expired
		case rc.State == spool.Delivered && l.IsLocal(rc.Address):
			r.Action = dsn.Delivered
		case rc.State == spool.Delivered:
			r.Action = dsn.Relayed
		default:
			r.Action = dsn.Delayed
			r.WillRetryUntil = m.Arrived.Add(l.cfg.Lifetime)
		}
		kind := r.Action
		if kind == dsn.Relayed {
			kind = dsn.Delivered
		}
		groups[kind] = append(groups[kind], r)
	}
	for _, kind := range []dsn.Action{dsn.Failed, dsn.Delayed, dsn.Delivered} {
		rs := groups[kind]
		if len(rs) == 0 {
			continue
		}
		ret := m.Params.Ret
		if kind != dsn.Failed {
			// Only a failure gives the message back; the others just
			// report on it.
			ret = "HDRS"
		}
		noticeID := l.spool.NewID()
		rep := &dsn.Report{
			ReportingMTA: l.cfg.Hostname, To: m.From, QueueID: m.ID, NoticeID: noticeID, EnvID: m.Params.EnvID,
			Arrived: m.Arrived, Recipients: rs, Ret: ret, UTF8: m.Params.SMTPUTF8, Now: now,
		}
		var buf bytes.Buffer
		if err := dsn.Build(&buf, rep, spool.BodyTxn(tx.Txn, m)); err != nil {
			l.log.Error("build notice", "id", m.ID, "error", err)
			continue
		}
		notice := &spool.Message{
			ID:      noticeID,
			Arrived: now,
			From:    "",
			Params:  spool.MailParams{SMTPUTF8: m.Params.SMTPUTF8},
			Rcpts:   []spool.Recipient{{Address: m.From, Notify: []string{"NEVER"}}},
		}
		if err := l.spool.EnqueueTxn(tx, notice, &buf); err != nil {
			l.log.Error("queue notice", "id", m.ID, "error", err)
			continue
		}
		l.log.Info("notice queued", "id", notice.ID, "about", m.ID, "action", string(kind), "to", m.From)
	}
}
