package loadgen

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Topics are the words that message subjects are made of, one per message,
// so that a SUBJECT search matches about one message in len(Topics).
var Topics = []string{
	"invoice", "meeting", "report", "lunch", "release", "backup", "deploy", "budget",
	"travel", "review", "holiday", "offsite", "hiring", "incident", "roadmap", "newsletter",
}

// Markers are the words that bodies carry, one per body variant, so that a
// BODY search matches about one message in len(Markers).
var Markers = []string{"aardvark", "bluebird", "cheetah", "dolphin", "emu", "flamingo", "gazelle", "heron"}

var filler = strings.Fields(`the of and to in is that for it as was with be by on not he this are or his
from at which but have an they you were her she there would their we him been has when who will more no if
out so said what up its about into than them can only other new some could time these two may then do first
any my now such like our over man me even most made after also did many before must through back years where
much your way well down should because each just those people how too little state good very make world still
own see men work long get here between both life being under never day same another know while last might us
great old year off come since against go came right used take three`)

// bodyVariants is how many different bodies each size class has.
const bodyVariants = 8

// headerRoom is the part of a message's size left for its header.
const headerRoom = 320

// Generator makes test messages: a header per message and a body shared by
// the messages of one size class and variant. Bodies are CRLF text whose
// lines never start with a dot, so they need no dot-stuffing.
type Generator struct {
	mix    Mix
	bodies [][][]byte // [size class][variant]
}

// NewGenerator prepares the bodies for mix.
func NewGenerator(mix Mix) *Generator {
	g := &Generator{mix: mix, bodies: make([][][]byte, len(mix))}
	r := rand.New(rand.NewPCG(1, 2))
	for i, c := range mix {
		for v := range bodyVariants {
			g.bodies[i] = append(g.bodies[i], makeBody(r, max(c.Size-headerRoom, 64), Markers[v%len(Markers)]))
		}
	}
	return g
}

// makeBody returns about size bytes of CRLF-terminated text lines, the
// first of which names marker.
func makeBody(r *rand.Rand, size int, marker string) []byte {
	var b bytes.Buffer
	b.Grow(size + 80)
	b.WriteString("Marker: " + marker + "\r\n")
	for b.Len() < size {
		line := 0
		for line < 70 && b.Len()+line < size {
			w := filler[r.IntN(len(filler))]
			if line > 0 {
				b.WriteByte(' ')
				line++
			}
			b.WriteString(w)
			line += len(w)
		}
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// Message is one generated message: Header and Body together are the
// message as it goes on the wire in DATA (before the final dot) and in
// APPEND.
type Message struct {
	Header []byte
	Body   []byte
}

// Size is the message's length in bytes.
func (m Message) Size() int { return len(m.Header) + len(m.Body) }

// Bytes returns the whole message in one slice.
func (m Message) Bytes() []byte {
	return append(append(make([]byte, 0, m.Size()), m.Header...), m.Body...)
}

// Message makes message number seq from from to the recipients to, with a
// size drawn from the generator's mix.
func (g *Generator) Message(r *rand.Rand, seq int64, from string, to []string) Message {
	class := g.mix.Pick(r)
	body := g.bodies[class][r.IntN(bodyVariants)]
	topic := Topics[r.IntN(len(Topics))]
	var h bytes.Buffer
	fmt.Fprintf(&h, "From: <%s>\r\n", from)
	fmt.Fprintf(&h, "To: %s\r\n", angleList(to))
	fmt.Fprintf(&h, "Subject: bench %s %d\r\n", topic, seq)
	fmt.Fprintf(&h, "Date: %s\r\n", time.Now().Format(time.RFC1123Z))
	fmt.Fprintf(&h, "Message-ID: <%d.%x@relay-bench>\r\n", seq, r.Uint64())
	h.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
	return Message{Header: h.Bytes(), Body: body}
}

func angleList(addrs []string) string {
	parts := make([]string, len(addrs))
	for i, a := range addrs {
		parts[i] = "<" + a + ">"
	}
	return strings.Join(parts, ", ")
}
