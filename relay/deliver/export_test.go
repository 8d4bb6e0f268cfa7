package deliver

import "time"

// SetBeforeCommit makes fn run inside every local-delivery transaction of
// l, after the mailbox insert and before the commit, so that a test can
// fail the delivery or end the worker there. Call it before Run.
func (l *Loop) SetBeforeCommit(fn func(id string) error) { l.beforeCommit = fn }

// Look kicks l and waits until a pass over the queue that started after the
// call has finished; it returns how many messages the passes since the call
// claimed. A test that asserts nothing was due uses it as the positive sign
// that the loop has looked.
func Look(l *Loop) (claimed int, ok bool) {
	l.rounds.Lock()
	since, before := l.rounds.started, l.rounds.claimed
	l.rounds.Unlock()
	l.Kick()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		l.rounds.Lock()
		done, claimed := l.rounds.done, l.rounds.claimed
		l.rounds.Unlock()
		if done > since {
			return claimed - before, true
		}
		time.Sleep(time.Millisecond)
	}
	return 0, false
}
