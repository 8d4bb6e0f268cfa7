package imapd

import (
	"strings"
	"testing"
)

func cachedValues(c *fieldCache, mailbox uint64, field string) (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.sets[fieldKey{mailbox, field}]
	if !ok {
		return 0, false
	}
	return len(el.Value.(*fieldSet).values), true
}

// The cache keeps to its budget by dropping the sets used longest ago, a
// set never grows past the budget, and a set that mostly names expunged
// messages starts afresh.
func TestFieldCacheBudget(t *testing.T) {
	value := fieldValue{present: true, text: strings.Repeat("x", 100-fieldEntryBytes)} // 100 bytes a value
	c := newFieldCache(1000)
	learn := func(mailbox uint64, field string, uids ...uint32) *fieldSearch {
		t.Helper()
		c.begin(mailbox, field) // registers
		fs := c.begin(mailbox, field)
		if !fs.learning() {
			t.Fatalf("the second search of %d/%s does not learn", mailbox, field)
		}
		for _, uid := range uids {
			fs.put(uid, value)
		}
		return fs
	}

	if fs := c.begin(1, "subject"); fs.learning() {
		t.Fatal("the first search of a field learns it")
	}
	learn(1, "Subject", 1, 2, 3)
	if n, _ := cachedValues(c, 1, "subject"); n != 3 {
		t.Fatalf("1/subject holds %d values, want 3 (field names fold case)", n)
	}
	learn(2, "subject", 1, 2, 3, 4)
	learn(1, "from", 1, 2)
	if c.bytes != 900 {
		t.Errorf("cache holds %d bytes, want 900", c.bytes)
	}
	// Using 1/subject makes 2/subject the oldest; 300 more bytes evict it.
	if _, ok := c.begin(1, "subject").get(2); !ok {
		t.Fatal("1/subject lost UID 2")
	}
	learn(3, "subject", 1, 2, 3)
	if _, ok := cachedValues(c, 2, "subject"); ok {
		t.Error("the least recently used set survived")
	}
	if _, ok := cachedValues(c, 1, "subject"); !ok {
		t.Error("a recently used set was evicted")
	}
	if c.bytes > c.budget {
		t.Errorf("cache holds %d bytes over its budget of %d", c.bytes, c.budget)
	}

	// One set cannot outgrow the budget.
	c = newFieldCache(1000)
	fs := learn(9, "subject")
	for uid := range uint32(50) {
		fs.put(uid+1, value)
	}
	if n, _ := cachedValues(c, 9, "subject"); n != 10 || c.bytes != 1000 {
		t.Errorf("a set given 50 values of 100 bytes under a budget of 1000 holds %d (%d bytes)", n, c.bytes)
	}
	// A set of 200 values in a mailbox that now has 2 messages: the rest
	// are of expunged ones.
	c = newFieldCache(1 << 20)
	fs = learn(9, "subject")
	for uid := range uint32(200) {
		fs.put(uid+1, value)
	}
	fs = c.begin(9, "subject")
	for uid := range uint32(2) {
		fs.get(uid + 1)
	}
	fs.end(2)
	if n, ok := cachedValues(c, 9, "subject"); !ok || n != 0 || c.bytes != 0 {
		t.Errorf("after a search of 2 messages, the set of 200 holds %d values (%d bytes), still registered %v", n, c.bytes, ok)
	}

	// A search that holds a set which was evicted, and its key registered
	// anew, adds nothing to either.
	c = newFieldCache(1000)
	stale := learn(5, "subject")
	c.drop(stale.set)
	c.begin(5, "subject")
	stale.put(1, value)
	if n, _ := cachedValues(c, 5, "subject"); n != 0 || c.bytes != 0 {
		t.Errorf("a put into an evicted set reached the cache: %d values, %d bytes", n, c.bytes)
	}

	// No budget, no cache.
	off := newFieldCache(-1)
	off.begin(1, "subject")
	if off.begin(1, "subject").learning() {
		t.Error("a cache without budget learns")
	}
	var none *fieldCache
	if none.begin(1, "subject").learning() {
		t.Error("a nil cache learns")
	}
}
