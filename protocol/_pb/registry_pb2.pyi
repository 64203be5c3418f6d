from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SiteKeyMessage(_message.Message):
    __slots__ = ("site_id", "key_id", "public_key_pem", "enrolled_at_unix_ms", "revoked")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    key_id: str
    public_key_pem: str
    enrolled_at_unix_ms: int
    revoked: bool
    def __init__(self, site_id: _Optional[str] = ..., key_id: _Optional[str] = ..., public_key_pem: _Optional[str] = ..., enrolled_at_unix_ms: _Optional[int] = ..., revoked: _Optional[bool] = ...) -> None: ...

class BundleRefMessage(_message.Message):
    __slots__ = ("task_id", "site_id", "backbone", "version", "bundle_digest", "key_id", "published_at_unix_ms", "size_bytes", "revoked", "kind")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    site_id: str
    backbone: str
    version: int
    bundle_digest: str
    key_id: str
    published_at_unix_ms: int
    size_bytes: int
    revoked: bool
    kind: str
    def __init__(self, task_id: _Optional[str] = ..., site_id: _Optional[str] = ..., backbone: _Optional[str] = ..., version: _Optional[int] = ..., bundle_digest: _Optional[str] = ..., key_id: _Optional[str] = ..., published_at_unix_ms: _Optional[int] = ..., size_bytes: _Optional[int] = ..., revoked: _Optional[bool] = ..., kind: _Optional[str] = ...) -> None: ...

class ListSitesRequest(_message.Message):
    __slots__ = ("include_revoked",)
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    include_revoked: bool
    def __init__(self, include_revoked: _Optional[bool] = ...) -> None: ...

class ListSitesResponse(_message.Message):
    __slots__ = ("sites",)
    SITES_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[SiteKeyMessage]
    def __init__(self, sites: _Optional[_Iterable[_Union[SiteKeyMessage, _Mapping]]] = ...) -> None: ...

class EnrollSiteRequest(_message.Message):
    __slots__ = ("site_id", "public_key_pem")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    public_key_pem: str
    def __init__(self, site_id: _Optional[str] = ..., public_key_pem: _Optional[str] = ...) -> None: ...

class FileEntry(_message.Message):
    __slots__ = ("name", "size_bytes", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class PublishHeader(_message.Message):
    __slots__ = ("files", "site_targets_metadata")
    FILES_FIELD_NUMBER: _ClassVar[int]
    SITE_TARGETS_METADATA_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[FileEntry]
    site_targets_metadata: bytes
    def __init__(self, files: _Optional[_Iterable[_Union[FileEntry, _Mapping]]] = ..., site_targets_metadata: _Optional[bytes] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("name", "offset", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    offset: int
    data: bytes
    def __init__(self, name: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PublishMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PublishHeader
    chunk: FileChunk
    def __init__(self, header: _Optional[_Union[PublishHeader, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("bundle",)
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    bundle: BundleRefMessage
    def __init__(self, bundle: _Optional[_Union[BundleRefMessage, _Mapping]] = ...) -> None: ...

class ListBundlesRequest(_message.Message):
    __slots__ = ("task_id", "site_id", "include_revoked")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    site_id: str
    include_revoked: bool
    def __init__(self, task_id: _Optional[str] = ..., site_id: _Optional[str] = ..., include_revoked: _Optional[bool] = ...) -> None: ...

class ListBundlesResponse(_message.Message):
    __slots__ = ("bundles", "unreadable")
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[BundleRefMessage]
    unreadable: _containers.RepeatedCompositeFieldContainer[UnreadableBundleMessage]
    def __init__(self, bundles: _Optional[_Iterable[_Union[BundleRefMessage, _Mapping]]] = ..., unreadable: _Optional[_Iterable[_Union[UnreadableBundleMessage, _Mapping]]] = ...) -> None: ...

class UnreadableBundleMessage(_message.Message):
    __slots__ = ("bundle_digest", "problem")
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    bundle_digest: str
    problem: str
    def __init__(self, bundle_digest: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...

class FetchBundleRequest(_message.Message):
    __slots__ = ("bundle_digest",)
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    bundle_digest: str
    def __init__(self, bundle_digest: _Optional[str] = ...) -> None: ...

class FetchMetadataRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class FetchMetadataResponse(_message.Message):
    __slots__ = ("content",)
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    def __init__(self, content: _Optional[bytes] = ...) -> None: ...

class FetchTargetRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class FetchEventLogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EventLogChunk(_message.Message):
    __slots__ = ("head_count", "head_hash", "offset", "data")
    HEAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    head_count: int
    head_hash: str
    offset: int
    data: bytes
    def __init__(self, head_count: _Optional[int] = ..., head_hash: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("bundle_digest", "key_id", "reason")
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    bundle_digest: str
    key_id: str
    reason: str
    def __init__(self, bundle_digest: _Optional[str] = ..., key_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("revoked_count",)
    REVOKED_COUNT_FIELD_NUMBER: _ClassVar[int]
    revoked_count: int
    def __init__(self, revoked_count: _Optional[int] = ...) -> None: ...
