package imapd

import (
	"slices"
	"testing"
)

// The sequence numbers of EXPUNGE responses count the removals before them
// (RFC 3501 §7.4.1): removing 2 and 4 of 1..5 is "EXPUNGE 2", "EXPUNGE 3".
func TestRemoveUIDs(t *testing.T) {
	tests := []struct {
		name       string
		view, gone []uint32
		seqs, left []uint32
	}{
		{"two in the middle", []uint32{1, 2, 3, 4, 5}, []uint32{2, 4}, []uint32{2, 3}, []uint32{1, 3, 5}},
		{"all", []uint32{3, 7, 9}, []uint32{9, 3, 7}, []uint32{1, 1, 1}, []uint32{}},
		{"first and last", []uint32{10, 20, 30, 40}, []uint32{10, 40}, []uint32{1, 3}, []uint32{20, 30}},
		{"unknown and twice", []uint32{1, 2, 3}, []uint32{5, 2, 2, 0}, []uint32{2}, []uint32{1, 3}},
		{"none", []uint32{1, 2}, nil, nil, []uint32{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := &view{uids: slices.Clone(tt.view), recent: map[uint32]bool{}}
			for _, uid := range tt.view {
				v.recent[uid] = true
			}
			seqs := v.removeUIDs(tt.gone)
			if !slices.Equal(seqs, tt.seqs) || !slices.Equal(v.uids, tt.left) {
				t.Errorf("removeUIDs(%v) from %v = %v, leaving %v; want %v, leaving %v", tt.gone, tt.view, seqs, v.uids, tt.seqs, tt.left)
			}
			for _, uid := range tt.gone {
				if v.recent[uid] {
					t.Errorf("UID %d is still \\Recent after its removal", uid)
				}
			}
		})
	}
}
