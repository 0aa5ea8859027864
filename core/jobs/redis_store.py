"""The Redis job store (distributed mode); see core.jobs.store for the interface."""

from __future__ import annotations

import json
import time

from .wakeups import final_channel
from .records import ACTIVE, QUEUED, JobRecord, Mutation
from .store import CapacityExceeded, JobStore, StoreUnavailable


def unavailable_errors(redis_mod) -> tuple[type[Exception], ...]:
    """Redis errors that mean "not now" (503, retried by workers): unreachable, timed out,
    out of memory (``maxmemory`` with ``noeviction``), a read-only replica after a
    fail-over."""
    errors = redis_mod.exceptions
    return (errors.ConnectionError, errors.TimeoutError, errors.OutOfMemoryError,
            errors.ReadOnlyError)


def is_out_of_memory(exc: Exception) -> bool:
    """An OOM reply that redis-py did not classify (inside a Lua script, Redis reports it as
    a script error whose text holds the OOM reply)."""
    return "OOM command not allowed" in str(exc) or \
        "command not allowed when used memory" in str(exc)


class RedisJobStore(JobStore):
    def __init__(self, url: str, *, prefix: str = "debm"):
        import redis

        self._redis_mod = redis
        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3,
                                           health_check_interval=30)
        self._create = self.client.register_script(self._CREATE)
        self._renew = self.client.register_script(self._RENEW)
        self._release = self.client.register_script(self._RELEASE)
        self._forget = self.client.register_script(self._FORGET)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _errors(self):
        return unavailable_errors(self._redis_mod)

    def _call(self, fn):
        errors = self._redis_mod.exceptions
        try:
            return fn()
        except (errors.OutOfMemoryError, errors.ResponseError) as exc:
            if isinstance(exc, errors.OutOfMemoryError) or is_out_of_memory(exc):
                raise StoreUnavailable(f"Redis is out of memory (maxmemory): {exc}") from None
            if isinstance(exc, errors.ReadOnlyError):
                raise StoreUnavailable(f"Redis is read-only: {exc}") from None
            raise
        except self._errors() as exc:
            raise StoreUnavailable(f"Redis is unreachable: {exc}") from None

    def _index_ops(self, pipe, job: JobRecord, before: JobRecord | None = None) -> None:
        active = self._key("active")
        owner_active = self._key("active", job.owner)
        if job.status in ACTIVE:
            pipe.sadd(active, job.id)
            pipe.sadd(owner_active, job.id)
        else:
            pipe.srem(active, job.id)
            pipe.srem(owner_active, job.id)
            pipe.hdel(self._key("work"), job.id)  # idempotent: the quotas never drift
        if before is not None and before.status != job.status:
            pipe.hincrby(self._key("counts"), f"{before.kind}:{before.status}", -1)
            pipe.hincrby(self._key("counts"), f"{job.kind}:{job.status}", 1)
            if job.final:
                # The retention reaper's index: finished jobs by the time they finished.
                pipe.zadd(self._key("finished"), {job.id: job.finished or time.time()})
                # Wakes API requests waiting on this job (core.jobs.wakeups), in the same
                # transaction as the final record, so a waiter woken up reads it.
                pipe.publish(final_channel(self.prefix), job.id)

    # Count and insert in one script: Redis runs it atomically, so no two requests can both
    # see room for one more job.  Work limits sum JobRecord.work of the active jobs (a hash
    # job id -> work holding only active jobs).  The key's own limits hold always; the total
    # limits hold only for a key that already has something active, so that no key can keep
    # another key's first job out (the fairness rule of core.work_units).
    _CREATE = """
    local max_total, max_owner = tonumber(ARGV[4]), tonumber(ARGV[5])
    local max_work_total, max_work_owner = tonumber(ARGV[6]), tonumber(ARGV[7])
    local work = tonumber(ARGV[8])
    local n_owner = redis.call('SCARD', KEYS[5])
    if max_owner > 0 and n_owner >= max_owner then return -2 end
    if max_work_owner > 0 then
      local sum = 0
      if n_owner > 0 then
        for _, v in ipairs(redis.call('HMGET', KEYS[6], unpack(redis.call('SMEMBERS', KEYS[5])))) do
          if v then sum = sum + tonumber(v) end
        end
      end
      if sum + work > max_work_owner then return -4 end
    end
    if n_owner > 0 then
      if max_total > 0 and redis.call('SCARD', KEYS[4]) >= max_total then return -1 end
      if max_work_total > 0 then
        local sum = 0
        for _, v in ipairs(redis.call('HVALS', KEYS[6])) do sum = sum + tonumber(v) end
        if sum + work > max_work_total then return -3 end
      end
    end
    if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
    redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
    redis.call('SADD', KEYS[4], ARGV[3])
    redis.call('SADD', KEYS[5], ARGV[3])
    redis.call('HSET', KEYS[6], ARGV[3], work)
    redis.call('HINCRBY', KEYS[7], ARGV[9], 1)
    return 1
    """
    # Delete final jobs by id, atomically per call, so that several reapers (API replicas)
    # can run it with the same ids: a record already gone changes nothing, and the counts
    # are decremented once.  ARGV: prefix, tombstone seconds, ids...
    _FORGET = """
    local prefix, tomb = ARGV[1], tonumber(ARGV[2])
    local deleted = {}
    for i = 3, #ARGV do
      local id = ARGV[i]
      local raw = redis.call('GET', prefix .. ':job:' .. id)
      if raw then
        local doc = cjson.decode(raw)
        local final = doc.status == 'succeeded' or doc.status == 'failed' or
                      doc.status == 'cancelled'
        if final then
          redis.call('DEL', prefix .. ':job:' .. id, prefix .. ':events:' .. id)
          redis.call('ZREM', prefix .. ':jobs', id)
          redis.call('ZREM', prefix .. ':jobs:owner:' .. doc.owner, id)
          redis.call('ZREM', prefix .. ':finished', id)
          redis.call('HINCRBY', prefix .. ':counts', doc.kind .. ':' .. doc.status, -1)
          redis.call('SET', prefix .. ':gone:' .. id, doc.owner, 'EX', tomb)
          table.insert(deleted, id)
        end
      else
        redis.call('ZREM', prefix .. ':finished', id)
      end
    end
    return deleted
    """
    _RENEW = """
    local holder = redis.call('GET', KEYS[1])
    if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
    return 0
    """
    _RELEASE = """
    if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
    return 0
    """

    def create(self, job: JobRecord, *, max_total=None, max_owner=None,
               max_work_total=None, max_work_owner=None) -> JobRecord:
        if job.status != QUEUED:
            raise ValueError("jobs are created queued")
        job.queued_at = job.queued_at or job.created
        keys = [self._key("job", job.id), self._key("jobs"),
                self._key("jobs", "owner", job.owner), self._key("active"),
                self._key("active", job.owner), self._key("work"), self._key("counts")]
        args = [job.to_json(), repr(job.created), job.id, int(max_total or 0),
                int(max_owner or 0), int(max_work_total or 0), int(max_work_owner or 0),
                int(job.work), f"{job.kind}:{QUEUED}"]
        outcome = int(self._call(lambda: self._create(keys=keys, args=args)))
        if outcome == -1:
            raise CapacityExceeded("total", int(max_total))
        if outcome == -2:
            raise CapacityExceeded("owner", int(max_owner))
        if outcome == -3:
            raise CapacityExceeded("total_work", int(max_work_total))
        if outcome == -4:
            raise CapacityExceeded("owner_work", int(max_work_owner))
        if outcome == 0:
            raise ValueError(f"job {job.id} exists")
        return job

    def get(self, job_id: str) -> JobRecord | None:
        raw = self._call(lambda: self.client.get(self._key("job", job_id)))
        return JobRecord.from_json(raw) if raw else None

    def _mutate(self, job_id: str, mutation: Mutation) -> tuple[JobRecord | None, bool]:
        key = self._key("job", job_id)
        watch_error = self._redis_mod.exceptions.WatchError

        def run():
            with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(key)
                        raw = pipe.get(key)
                        if raw is None:
                            pipe.unwatch()
                            return None, False
                        before = JobRecord.from_json(raw)
                        job = mutation(JobRecord.from_json(raw))
                        if job is None:
                            pipe.unwatch()
                            return before, False
                        pipe.multi()
                        pipe.set(key, job.to_json())
                        self._index_ops(pipe, job, before)
                        pipe.execute()
                        return job, True
                    except watch_error:
                        continue
        return self._call(run)

    def list(self, *, owner=None, limit=50, statuses=None, kind=None):
        index = self._key("jobs", "owner", owner) if owner else self._key("jobs")
        wanted = set(statuses) if statuses else None
        out: list[JobRecord] = []
        start, page = 0, max(limit, 100)
        while len(out) < limit:
            ids = self._call(lambda: self.client.zrevrange(index, start, start + page - 1))
            if not ids:
                break
            raws = self._call(lambda: self.client.mget([self._key("job", i.decode())
                                                        for i in ids]))
            for raw in raws:
                if raw is None:
                    continue
                job = JobRecord.from_json(raw)
                if (wanted is None or job.status in wanted) and (kind is None
                                                                  or job.kind == kind):
                    out.append(job)
                    if len(out) >= limit:
                        break
            start += page
        return out

    def count_active(self, owner=None):
        key = self._key("active", owner) if owner else self._key("active")
        return int(self._call(lambda: self.client.scard(key)))

    def active_work(self, owner=None):
        def run():
            if owner is None:
                values = self.client.hvals(self._key("work"))
            else:
                ids = list(self.client.smembers(self._key("active", owner)))
                values = self.client.hmget(self._key("work"), ids) if ids else []
            return sum(int(v) for v in values if v is not None)
        return int(self._call(run))

    def counts(self):
        raw = self._call(lambda: self.client.hgetall(self._key("counts")))
        out: dict[tuple[str, str], int] = {}
        for field, value in raw.items():
            kind, _, status = field.decode().partition(":")
            out[(kind, status)] = max(0, int(value))
        return out

    def heartbeat(self, worker, info, ttl):
        payload = json.dumps({**info, "worker": worker, "at": time.time()})
        self._call(lambda: self.client.set(self._key("worker", worker), payload,
                                           px=max(1, int(ttl * 1000))))

    def forget_worker(self, worker):
        self._call(lambda: self.client.delete(self._key("worker", worker)))

    def workers(self):
        def run():
            keys = list(self.client.scan_iter(match=self._key("worker", "*"), count=100))
            values = self.client.mget(keys) if keys else []
            return [json.loads(v) for v in values if v]
        return self._call(run)

    def ping(self):
        self._call(self.client.ping)

    def acquire_lease(self, job_id, holder, ttl):
        return bool(self._call(lambda: self.client.set(
            self._key("lease", job_id), holder, nx=True, px=max(1, int(ttl * 1000)))))

    def renew_lease(self, job_id, holder, ttl):
        return bool(self._call(lambda: self._renew(keys=[self._key("lease", job_id)],
                                                   args=[holder, max(1, int(ttl * 1000))])))

    def release_lease(self, job_id, holder):
        self._call(lambda: self._release(keys=[self._key("lease", job_id)], args=[holder]))

    def leases(self, job_ids):
        if not job_ids:
            return {}
        values = self._call(lambda: self.client.mget([self._key("lease", j) for j in job_ids]))
        return {j: v.decode() for j, v in zip(job_ids, values) if v is not None}

    def active(self):
        def run():
            ids = [i.decode() for i in self.client.smembers(self._key("active"))]
            raws = self.client.mget([self._key("job", i) for i in ids]) if ids else []
            return [JobRecord.from_json(r) for r in raws if r]
        jobs = self._call(run)
        return sorted((j for j in jobs if j.status in ACTIVE), key=lambda j: j.created)

    def expired_jobs(self, finished_before, limit):
        def run():
            self._index_finished_once()
            ids = self.client.zrangebyscore(self._key("finished"), "-inf",
                                            f"({finished_before!r}", start=0, num=int(limit))
            raws = self.client.mget([self._key("job", i.decode()) for i in ids]) if ids else []
            return [JobRecord.from_json(r) for r in raws if r]
        return self._call(run)

    def _index_finished_once(self) -> None:
        """Jobs that finished before the ``finished`` index existed (an upgrade) are added
        to it once, in pages of the listing index; a marker key records that it was done."""
        marker = self._key("finished", "indexed")
        if self.client.exists(marker):
            return
        start, page = 0, 1000
        while True:
            ids = self.client.zrange(self._key("jobs"), start, start + page - 1)
            if not ids:
                break
            raws = self.client.mget([self._key("job", i.decode()) for i in ids])
            done = {}
            for raw in raws:
                if raw:
                    job = JobRecord.from_json(raw)
                    if job.final:
                        done[job.id] = job.finished or job.created
            if done:
                self.client.zadd(self._key("finished"), done)
            start += page
        self.client.set(marker, "1")

    def forget_jobs(self, job_ids, tombstone_until):
        if not job_ids:
            return []
        seconds = max(1, int(tombstone_until - time.time()))
        deleted = self._call(lambda: self._forget(keys=[], args=[self.prefix, seconds,
                                                                 *job_ids]))
        return [i.decode() if isinstance(i, bytes) else str(i) for i in deleted]

    def tombstone(self, job_id):
        raw = self._call(lambda: self.client.get(self._key("gone", job_id)))
        return raw.decode() if raw else None

    def reaper_lock(self, ttl):
        import secrets

        token = secrets.token_hex(8)
        taken = self._call(lambda: self.client.set(self._key("reaper"), token, nx=True,
                                                   px=max(1, int(ttl * 1000))))
        return token if taken else None

    def reaper_unlock(self, token):
        self._call(lambda: self._release(keys=[self._key("reaper")], args=[token]))

    def close(self):
        self.client.close()

    # --- API keys added at run time (core.keys): PREFIX:apikeys (id -> record) and
    # PREFIX:apikey-digests (digest -> id), both written by one script ------------------------
    _PUT_API_KEY = """
    if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
    redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
    return 1"""
    _DELETE_API_KEY = """
    local doc = redis.call('HGET', KEYS[1], ARGV[1])
    if not doc then return 0 end
    redis.call('HDEL', KEYS[2], cjson.decode(doc)['digest'])
    redis.call('HDEL', KEYS[1], ARGV[1])
    return 1"""

    def _api_key_hashes(self) -> list[str]:
        return [self._key("apikeys"), self._key("apikey-digests")]

    def put_api_key(self, record):
        script = self.client.register_script(self._PUT_API_KEY)
        return bool(self._call(lambda: script(keys=self._api_key_hashes(), args=[
            record["id"], record["digest"], json.dumps(record)])))

    def list_api_keys(self):
        docs = self._call(lambda: self.client.hvals(self._key("apikeys")))
        return sorted((json.loads(d) for d in docs), key=lambda r: r["id"])

    def delete_api_key(self, key_id):
        script = self.client.register_script(self._DELETE_API_KEY)
        return bool(self._call(lambda: script(keys=self._api_key_hashes(), args=[key_id])))

    def api_key_by_digest(self, digest):
        def run():
            key_id = self.client.hget(self._key("apikey-digests"), digest)
            return self.client.hget(self._key("apikeys"), key_id) if key_id else None
        doc = self._call(run)
        return json.loads(doc) if doc else None
