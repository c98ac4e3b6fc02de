package upload_test

import (
	"bytes"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// memS3 is an in-memory S3 server, reached through its RoundTrip method
// instead of the network. It is a fake, used only where nothing real can
// run: the timing tests (bandwidth cap, windows, backoff) run the uploader
// in a testing/synctest bubble, where time advances only while every
// goroutine of the bubble waits on it, and a goroutine blocked on a socket
// (any real server, versitygw included) never counts as waiting. It speaks
// the part of the S3 protocol the uploader uses (PUT, HEAD and GET of an
// object, multipart upload, list parts, complete, abort) with MD5 ETags as
// AWS and versitygw give them, and checks every Content-MD5. The same
// uploader code runs against versitygw in the other tests.
type memS3 struct {
	bucket string
	mu     struct {
		sync.Mutex
		objects  map[string]memObject
		uploads  map[string]*memUpload
		next     int
		putBytes int64                  // body bytes of every PUT that arrived
		sends    map[string]map[int]int // key -> part number -> times sent
		acked    map[string][]int       // key -> part numbers answered 200, in order
		partAt   []time.Time            // start of every part upload
		failPart bool                   // answer part uploads with 500 InternalError
	}
}

type memObject struct {
	data []byte
	etag string // the MD5, or md5(part MD5s)-N for a multipart object
}

type memUpload struct {
	key   string
	parts map[int][]byte
}

func newMemS3(bucket string) *memS3 {
	m := &memS3{bucket: bucket}
	m.mu.objects = map[string]memObject{}
	m.mu.uploads = map[string]*memUpload{}
	m.mu.sends = map[string]map[int]int{}
	m.mu.acked = map[string][]int{}
	return m
}

// RoundTrip reads the request body (a failure there is a broken
// connection) and answers from memory, in the caller's goroutine.
func (m *memS3) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodPut && r.URL.Query().Has("partNumber") {
		m.mu.Lock()
		m.mu.partAt = append(m.mu.partAt, time.Now())
		m.mu.Unlock()
	}
	var body []byte
	if r.Body != nil {
		b, err := io.ReadAll(&memCounter{m: m, r: r.Body, put: r.Method == http.MethodPut})
		r.Body.Close()
		if err != nil {
			return nil, err
		}
		body = b
	}
	if err := r.Context().Err(); err != nil {
		return nil, err
	}
	rec := httptest.NewRecorder()
	m.serve(rec, r, body)
	resp := rec.Result()
	resp.Request = r
	return resp, nil
}

// memCounter counts PUT body bytes as they are read: the bytes on the wire.
type memCounter struct {
	m   *memS3
	r   io.Reader
	put bool
}

func (c *memCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.put {
		c.m.mu.Lock()
		c.m.mu.putBytes += int64(n)
		c.m.mu.Unlock()
	}
	return n, err
}

const s3NS = "http://s3.amazonaws.com/doc/2006-03-01/"

func s3Error(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message></Error>`, code, msg)
}

func md5Hex(b []byte) string { s := md5.Sum(b); return hex.EncodeToString(s[:]) }

func (m *memS3) serve(w http.ResponseWriter, r *http.Request, body []byte) {
	path := strings.TrimPrefix(r.URL.Path, "/")
	bkt, key, _ := strings.Cut(path, "/")
	if bkt != m.bucket {
		s3Error(w, http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist")
		return
	}
	if md := r.Header.Get("Content-Md5"); md != "" {
		if want := md5.Sum(body); md != base64.StdEncoding.EncodeToString(want[:]) {
			s3Error(w, http.StatusBadRequest, "BadDigest", "The Content-MD5 you specified did not match what was received.")
			return
		}
	}
	q := r.URL.Query()
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case r.Method == http.MethodPut && q.Has("partNumber"):
		n, _ := strconv.Atoi(q.Get("partNumber"))
		if m.mu.sends[key] == nil {
			m.mu.sends[key] = map[int]int{}
		}
		m.mu.sends[key][n]++
		if m.mu.failPart {
			s3Error(w, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
			return
		}
		up := m.mu.uploads[q.Get("uploadId")]
		if up == nil || up.key != key {
			s3Error(w, http.StatusNotFound, "NoSuchUpload", "The specified upload does not exist.")
			return
		}
		up.parts[n] = body
		m.mu.acked[key] = append(m.mu.acked[key], n)
		w.Header().Set("ETag", `"`+md5Hex(body)+`"`)
	case r.Method == http.MethodPut:
		m.mu.objects[key] = memObject{data: body, etag: md5Hex(body)}
		w.Header().Set("ETag", `"`+md5Hex(body)+`"`)
	case r.Method == http.MethodPost && q.Has("uploads"):
		m.mu.next++
		id := fmt.Sprintf("upload-%d", m.mu.next)
		m.mu.uploads[id] = &memUpload{key: key, parts: map[int][]byte{}}
		fmt.Fprintf(w, `<InitiateMultipartUploadResult xmlns="%s"><Bucket>%s</Bucket><Key>%s</Key><UploadId>%s</UploadId></InitiateMultipartUploadResult>`, s3NS, bkt, key, id)
	case r.Method == http.MethodPost && q.Has("uploadId"):
		up := m.mu.uploads[q.Get("uploadId")]
		if up == nil || up.key != key {
			s3Error(w, http.StatusNotFound, "NoSuchUpload", "The specified upload does not exist.")
			return
		}
		var req struct {
			Parts []struct {
				PartNumber int
				ETag       string
			} `xml:"Part"`
		}
		if err := xml.Unmarshal(body, &req); err != nil || len(req.Parts) == 0 {
			s3Error(w, http.StatusBadRequest, "MalformedXML", "The XML you provided was not well-formed.")
			return
		}
		var data []byte
		all := md5.New()
		for i, p := range req.Parts {
			b, ok := up.parts[p.PartNumber]
			if !ok || strings.Trim(p.ETag, `"`) != md5Hex(b) || (i > 0 && p.PartNumber <= req.Parts[i-1].PartNumber) {
				s3Error(w, http.StatusBadRequest, "InvalidPart", "One or more of the specified parts could not be found.")
				return
			}
			data = append(data, b...)
			s := md5.Sum(b)
			all.Write(s[:])
		}
		etag := fmt.Sprintf("%x-%d", all.Sum(nil), len(req.Parts))
		m.mu.objects[key] = memObject{data: data, etag: etag}
		delete(m.mu.uploads, q.Get("uploadId"))
		fmt.Fprintf(w, `<CompleteMultipartUploadResult xmlns="%s"><Bucket>%s</Bucket><Key>%s</Key><ETag>"%s"</ETag></CompleteMultipartUploadResult>`, s3NS, bkt, key, etag)
	case r.Method == http.MethodGet && q.Has("uploadId"):
		up := m.mu.uploads[q.Get("uploadId")]
		if up == nil || up.key != key {
			s3Error(w, http.StatusNotFound, "NoSuchUpload", "The specified upload does not exist.")
			return
		}
		nums := make([]int, 0, len(up.parts))
		for n := range up.parts {
			nums = append(nums, n)
		}
		slices.Sort(nums)
		var b strings.Builder
		fmt.Fprintf(&b, `<ListPartsResult xmlns="%s"><Bucket>%s</Bucket><Key>%s</Key><UploadId>%s</UploadId><IsTruncated>false</IsTruncated>`, s3NS, bkt, key, q.Get("uploadId"))
		for _, n := range nums {
			fmt.Fprintf(&b, `<Part><PartNumber>%d</PartNumber><ETag>"%s"</ETag><Size>%d</Size></Part>`, n, md5Hex(up.parts[n]), len(up.parts[n]))
		}
		b.WriteString(`</ListPartsResult>`)
		io.WriteString(w, b.String())
	case r.Method == http.MethodDelete && q.Has("uploadId"):
		delete(m.mu.uploads, q.Get("uploadId"))
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodHead || r.Method == http.MethodGet:
		obj, ok := m.mu.objects[key]
		if !ok {
			if r.Method == http.MethodHead {
				w.WriteHeader(http.StatusNotFound)
				return
			}
			s3Error(w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
			return
		}
		w.Header().Set("ETag", `"`+obj.etag+`"`)
		w.Header().Set("Content-Length", strconv.Itoa(len(obj.data)))
		w.Header().Set("Last-Modified", time.Now().UTC().Format(http.TimeFormat))
		if r.Method == http.MethodGet {
			_, _ = io.Copy(w, bytes.NewReader(obj.data))
		}
	default:
		s3Error(w, http.StatusNotImplemented, "NotImplemented", r.Method+" "+r.URL.String())
	}
}

// object returns the stored object at key.
func (m *memS3) object(key string) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.mu.objects[key]
	return o.data, ok
}

// acked returns the part numbers of key answered 200, in order.
func (m *memS3) acked(key string) []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.mu.acked[key])
}

// sends returns how often each part of key was sent.
func (m *memS3) sends(key string) map[int]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[int]int{}
	for k, v := range m.mu.sends[key] {
		out[k] = v
	}
	return out
}

// putBytes returns the body bytes of every PUT so far.
func (m *memS3) putBytes() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.putBytes
}

// partTimes returns when every part upload started.
func (m *memS3) partTimes() []time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.mu.partAt)
}

// failParts makes part uploads fail with a 500 InternalError (or not).
func (m *memS3) failParts(on bool) {
	m.mu.Lock()
	m.mu.failPart = on
	m.mu.Unlock()
}

// uploads returns the number of unfinished multipart uploads.
func (m *memS3) uploads() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.mu.uploads)
}
