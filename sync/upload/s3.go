package upload

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/sync/errgroup"

	"github.com/episoded/episoded/internal/redact"
	"github.com/episoded/episoded/storage"
)

// s3Target uploads to any S3-compatible endpoint through minio-go's
// low-level Core API, so that the multipart upload id and parts can be kept
// in the store and resumed.
type s3Target struct {
	core     minio.Core
	bucket   string
	desc     string
	partSize int64
	conc     int
	u        *Uploader
}

func newS3Target(t Target, u *Uploader) (*s3Target, error) {
	endpoint := t.Endpoint
	secure := true
	if strings.Contains(endpoint, "://") {
		pu, err := url.Parse(endpoint)
		if err != nil {
			return nil, fmt.Errorf("parse endpoint %s: %w", redact.URL(endpoint), err)
		}
		switch pu.Scheme {
		case "http":
			secure = false
		case "https":
		default:
			return nil, fmt.Errorf("endpoint %s: scheme must be http or https", redact.URL(endpoint))
		}
		endpoint = pu.Host
	}
	access, secret := t.AccessKey, t.SecretKey
	if access == "" && secret == "" {
		access, secret = os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 2 * time.Minute,
		ExpectContinueTimeout: time.Second,
		WriteBufferSize:       256 << 10,
		ReadBufferSize:        64 << 10,
		DisableCompression:    true,
	}
	if secure {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // opt-in for lab setups
		if t.CAFile != "" {
			pem, err := os.ReadFile(t.CAFile)
			if err != nil {
				return nil, fmt.Errorf("read ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ca_file %s holds no PEM certificate", t.CAFile)
			}
			tc.RootCAs = pool
		}
		tr.TLSClientConfig = tc
	}
	var rt http.RoundTripper = tr
	if u.o.transport != nil {
		rt = u.o.transport
	}
	lookup := minio.BucketLookupAuto
	if t.PathStyle {
		lookup = minio.BucketLookupPath
	}
	cl, err := minio.New(endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(access, secret, ""),
		Secure:       secure,
		Transport:    rt,
		Region:       t.Region,
		BucketLookup: lookup,
		MaxRetries:   1, // the uploader retries with its own backoff
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", redact.URL(t.Endpoint), err)
	}
	scheme := "https"
	if !secure {
		scheme = "http"
	}
	desc := fmt.Sprintf("s3 %s://%s/%s", scheme, endpoint, t.Bucket)
	return &s3Target{core: minio.Core{Client: cl}, bucket: t.Bucket, desc: redact.URL(desc), u: u}, nil
}

func (s *s3Target) String() string { return s.desc }

// terminalCodes are S3 error codes that retrying cannot fix.
var terminalCodes = map[string]bool{
	"AccessDenied": true, "NoSuchBucket": true, "InvalidAccessKeyId": true, "SignatureDoesNotMatch": true,
	"InvalidBucketName": true, "AccountProblem": true, "AllAccessDisabled": true, "InvalidArgument": true,
	"AuthorizationHeaderMalformed": true, "MethodNotAllowed": true, "NotImplemented": true,
}

// fullCodes are S3 error codes for a bucket, quota or disk that is full:
// terminal, and the multipart upload is aborted so that its parts do not
// keep the space.
var fullCodes = map[string]bool{
	"InsufficientStorage": true, "XMinioStorageFull": true, "QuotaExceeded": true,
	"XMinioAdminBucketQuotaExceeded": true, "StorageFull": true, "EntityTooLarge": true,
}

// terminal404 are non-standard 404 codes some servers give for bad
// credentials (versitygw: XAdminUserNotFound for an unknown access key).
var terminal404 = map[string]bool{"XAdminUserNotFound": true, "UserNotFound": true, "NoSuchUser": true}

// transient400 are 4xx codes that are worth retrying.
var transient4xx = map[string]bool{
	"RequestTimeout": true, "BadDigest": true, "IncompleteBody": true, "RequestTimeTooSkewed": true,
	"XAmzContentSHA256Mismatch": true, "SlowDown": true, "ExpiredToken": true, "NoSuchUpload": true,
	"InvalidPart": true, "InvalidPartOrder": true, "NoSuchKey": true, "TooManyRequests": true,
}

// classify wraps err with op and marks terminal S3 errors.
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) && er.StatusCode != 0 {
		code := er.Code
		msg := er.Message
		if msg == "" {
			msg = http.StatusText(er.StatusCode)
		}
		full := fullCodes[code] || er.StatusCode == http.StatusInsufficientStorage
		terminal := full || terminalCodes[code] || terminal404[code] ||
			((er.StatusCode == http.StatusForbidden || er.StatusCode == http.StatusBadRequest) && !transient4xx[code])
		if terminal {
			return &TerminalError{Op: op, Code: code, Status: er.StatusCode, Err: errors.New(msg), Full: full}
		}
		return &ServerError{Op: op, Code: code, Status: er.StatusCode, Err: errors.New(msg)}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// notFound reports whether err is a plain "no such key" answer (not a
// missing bucket, nor a non-standard 404 for bad credentials).
func notFound(err error) bool {
	var er minio.ErrorResponse
	if !errors.As(err, &er) {
		return false
	}
	switch er.Code {
	case "NoSuchKey", "NotFound":
		return true
	case "":
		return er.StatusCode == http.StatusNotFound
	}
	return false
}

// abort drops obj's unfinished multipart upload on the server.
func (s *s3Target) abort(ctx context.Context, obj *storage.ObjectState) error {
	if obj.UploadID == "" {
		return nil
	}
	if err := s.core.AbortMultipartUpload(ctx, s.bucket, obj.Key, obj.UploadID); err != nil && !isCode(err, "NoSuchUpload") {
		return classify("abort multipart upload of "+obj.Key, err)
	}
	return nil
}

func isCode(err error, codes ...string) bool {
	var er minio.ErrorResponse
	return errors.As(err, &er) && slices.Contains(codes, er.Code)
}

func (s *s3Target) stat(ctx context.Context, key string) (objInfo, error) {
	info, err := s.core.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		if notFound(err) {
			return objInfo{}, errNotExist
		}
		return objInfo{}, classify("stat "+key, err)
	}
	return objInfo{Size: info.Size, ETag: strings.Trim(info.ETag, `"`)}, nil
}

func (s *s3Target) get(ctx context.Context, key string, max int64) ([]byte, error) {
	rc, _, _, err := s.core.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		if notFound(err) {
			return nil, errNotExist
		}
		return nil, classify("get "+key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, max))
	if err != nil {
		if notFound(err) {
			return nil, errNotExist
		}
		return nil, classify("get "+key, err)
	}
	return b, nil
}

func md5Of(r io.Reader) ([]byte, error) {
	h := md5.New()
	if _, err := io.Copy(h, r); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

var md5ETag = regexp.MustCompile(`^[0-9a-f]{32}$`)
var multipartETag = regexp.MustCompile(`^[0-9a-f]{32}-[0-9]+$`)

// checkETag compares a returned ETag with the expected MD5-based one when
// the server uses that scheme (AWS, MinIO, versitygw and most others do
// without SSE-KMS); other ETags are not checksums and are accepted.
func checkETag(op, got, want string) error {
	got = strings.Trim(got, `"`)
	if (md5ETag.MatchString(got) || multipartETag.MatchString(got)) && got != want {
		return fmt.Errorf("%s: checksum mismatch: server ETag %s, want %s", op, got, want)
	}
	return nil
}

func (s *s3Target) putBytes(ctx context.Context, key string, data []byte, contentType string) error {
	sum := md5.Sum(data)
	info, err := s.core.PutObject(ctx, s.bucket, key, &limitedReader{ctx: ctx, u: s.u, r: bytes.NewReader(data)}, int64(len(data)),
		base64.StdEncoding.EncodeToString(sum[:]), "", minio.PutObjectOptions{ContentType: contentType, DisableContentSha256: true})
	if err != nil {
		return classify("put "+key, err)
	}
	return checkETag("put "+key, info.ETag, hex.EncodeToString(sum[:]))
}

func (s *s3Target) partCount(size int64) int {
	if size == 0 {
		return 1
	}
	return int((size + s.partSize - 1) / s.partSize)
}

func (s *s3Target) partRange(n int, size int64) (off, length int64) {
	off = int64(n-1) * s.partSize
	return off, min(s.partSize, size-off)
}

// expectedETag computes the ETag an MD5-ETag server gives the object:
// the MD5 for a single PUT, md5(concat(part md5s))-N for multipart.
func (s *s3Target) expectedETag(f *os.File, size int64, multipart bool) (string, error) {
	if !multipart {
		sum, err := md5Of(io.NewSectionReader(f, 0, size))
		return hex.EncodeToString(sum), err
	}
	n := s.partCount(size)
	all := md5.New()
	for i := 1; i <= n; i++ {
		off, l := s.partRange(i, size)
		sum, err := md5Of(io.NewSectionReader(f, off, l))
		if err != nil {
			return "", err
		}
		all.Write(sum)
	}
	return fmt.Sprintf("%x-%d", all.Sum(nil), n), nil
}

func (s *s3Target) putFile(ctx context.Context, path string, obj *storage.ObjectState, save func() error, cont func() error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open staged %s: %w", path, err)
	}
	defer f.Close()
	size := obj.Size
	multipart := size > s.partSize

	// A previous run may have completed the object without recording it.
	if info, err := s.stat(ctx, obj.Key); err == nil && info.Size == size {
		want, herr := s.expectedETag(f, size, multipart)
		if herr != nil {
			return fmt.Errorf("hash staged %s: %w", path, herr)
		}
		if checkETag("", info.ETag, want) == nil && (md5ETag.MatchString(info.ETag) || multipartETag.MatchString(info.ETag)) {
			s.u.log.Info("object already complete on target", "key", obj.Key)
			obj.Done = true
			return save()
		}
	} else if err != nil && !errors.Is(err, errNotExist) {
		return err
	}

	if !multipart {
		if err := cont(); err != nil {
			return err
		}
		sum, err := md5Of(io.NewSectionReader(f, 0, size))
		if err != nil {
			return fmt.Errorf("hash staged %s: %w", path, err)
		}
		info, err := s.core.PutObject(ctx, s.bucket, obj.Key, &limitedReader{ctx: ctx, u: s.u, r: io.NewSectionReader(f, 0, size)}, size,
			base64.StdEncoding.EncodeToString(sum), "", minio.PutObjectOptions{ContentType: "application/x-mcap", DisableContentSha256: true})
		if err != nil {
			return classify("put "+obj.Key, err)
		}
		if err := checkETag("put "+obj.Key, info.ETag, hex.EncodeToString(sum)); err != nil {
			return err
		}
		return s.verifyAndFinish(ctx, f, obj, false, save)
	}
	return s.multipart(ctx, f, obj, save, cont)
}

func (s *s3Target) multipart(ctx context.Context, f *os.File, obj *storage.ObjectState, save func() error, cont func() error) error {
	size := obj.Size
	n := s.partCount(size)
	// Recorded parts must match the current part size, else start over.
	valid := obj.UploadID != ""
	for _, p := range obj.Parts {
		if p.Number < 1 || p.Number > n {
			valid = false
			break
		}
		if _, l := s.partRange(p.Number, size); l != p.Size {
			valid = false
			break
		}
	}
	if obj.UploadID != "" && valid {
		// Is the upload still known to the server?
		if _, err := s.core.ListObjectParts(ctx, s.bucket, obj.Key, obj.UploadID, 0, 1); err != nil {
			if !isCode(err, "NoSuchUpload") {
				return classify("list parts of "+obj.Key, err)
			}
			s.u.log.Warn("multipart upload gone on the server, starting over", "key", obj.Key)
			valid = false
		}
	}
	if !valid {
		if obj.UploadID != "" {
			_ = s.core.AbortMultipartUpload(ctx, s.bucket, obj.Key, obj.UploadID)
		}
		obj.UploadID, obj.Parts = "", nil
	}
	if obj.UploadID == "" {
		id, err := s.core.NewMultipartUpload(ctx, s.bucket, obj.Key, minio.PutObjectOptions{ContentType: "application/x-mcap"})
		if err != nil {
			return classify("start multipart upload of "+obj.Key, err)
		}
		obj.UploadID = id
		if err := save(); err != nil {
			return err
		}
	}
	done := map[int]bool{}
	for _, p := range obj.Parts {
		done[p.Number] = true
	}
	var remaining []int // parts not yet uploaded
	for i := 1; i <= n; i++ {
		if !done[i] {
			remaining = append(remaining, i)
		}
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	// At most conc parts in flight. The window (cont) is checked once a
	// slot is free, right before the part starts: a part never starts
	// after its window closed, and the parts in flight finish.
	slots := make(chan struct{}, s.conc)
	for _, num := range remaining {
		select {
		case slots <- struct{}{}:
		case <-gctx.Done():
		}
		if gctx.Err() != nil {
			break
		}
		if err := cont(); err != nil {
			_ = g.Wait()
			return err
		}
		g.Go(func() error {
			defer func() { <-slots }()
			off, l := s.partRange(num, size)
			sum, err := md5Of(io.NewSectionReader(f, off, l))
			if err != nil {
				return fmt.Errorf("hash staged part %d: %w", num, err)
			}
			part, err := s.core.PutObjectPart(gctx, s.bucket, obj.Key, obj.UploadID, num,
				&limitedReader{ctx: gctx, u: s.u, r: io.NewSectionReader(f, off, l)}, l,
				minio.PutObjectPartOptions{Md5Base64: base64.StdEncoding.EncodeToString(sum), DisableContentSha256: true})
			if err != nil {
				return classify(fmt.Sprintf("put part %d of %s", num, obj.Key), err)
			}
			if err := checkETag(fmt.Sprintf("put part %d of %s", num, obj.Key), part.ETag, hex.EncodeToString(sum)); err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			obj.Parts = append(obj.Parts, storage.PartState{Number: num, Size: l, ETag: strings.Trim(part.ETag, `"`)})
			slices.SortFunc(obj.Parts, func(a, b storage.PartState) int { return a.Number - b.Number })
			s.u.addDone(l)
			return save()
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(obj.Parts) != n {
		return fmt.Errorf("upload %s: %d of %d parts done", obj.Key, len(obj.Parts), n)
	}
	parts := make([]minio.CompletePart, len(obj.Parts))
	for i, p := range obj.Parts {
		parts[i] = minio.CompletePart{PartNumber: p.Number, ETag: p.ETag}
	}
	if _, err := s.core.CompleteMultipartUpload(ctx, s.bucket, obj.Key, obj.UploadID, parts, minio.PutObjectOptions{}); err != nil {
		if isCode(err, "NoSuchUpload") {
			// Completed before a crash, or aborted: check what is there.
			if info, serr := s.stat(ctx, obj.Key); serr == nil && info.Size == size {
				return s.verifyAndFinish(ctx, f, obj, true, save)
			}
			obj.UploadID, obj.Parts = "", nil
			_ = save()
		}
		return classify("complete multipart upload of "+obj.Key, err)
	}
	return s.verifyAndFinish(ctx, f, obj, true, save)
}

// verifyAndFinish checks the stored object (HEAD: size, and the MD5-based
// ETag where the server uses one) and marks it done.
func (s *s3Target) verifyAndFinish(ctx context.Context, f *os.File, obj *storage.ObjectState, multipart bool, save func() error) error {
	info, err := s.stat(ctx, obj.Key)
	if err != nil {
		return fmt.Errorf("verify %s: %w", obj.Key, err)
	}
	if info.Size != obj.Size {
		return fmt.Errorf("verify %s: size %d on the server, want %d", obj.Key, info.Size, obj.Size)
	}
	want, ok := etagFromParts(obj.Parts)
	if !multipart || !ok {
		if want, err = s.expectedETag(f, obj.Size, multipart); err != nil {
			return fmt.Errorf("verify %s: %w", obj.Key, err)
		}
	}
	if err := checkETag("verify "+obj.Key, info.ETag, want); err != nil {
		return err
	}
	obj.Done = true
	return save()
}

// etagFromParts derives the multipart ETag from the recorded part ETags,
// each of which was checked against the part's MD5 when it was uploaded.
func etagFromParts(parts []storage.PartState) (string, bool) {
	all := md5.New()
	for _, p := range parts {
		b, err := hex.DecodeString(p.ETag)
		if err != nil || len(b) != md5.Size {
			return "", false
		}
		all.Write(b)
	}
	return fmt.Sprintf("%x-%d", all.Sum(nil), len(parts)), len(parts) > 0
}
