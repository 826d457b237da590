// A small fixed-size thread pool owned by one addon instance (one per Node environment: the main
// thread and each worker thread that loads the addon get their own).
//
// Why not libuv's pool: it has 4 threads by default and is shared with fs and dns, so long XTS
// batches there would starve file I/O — exactly what a disk-conversion pipeline does at the same
// time. Threads are started lazily on the first task, can be resized, and are joined by Shutdown()
// (called from the environment's cleanup hook and from the destructor).
//
// Tasks receive `cancelled`: false when run by a worker, true when the pool was shut down before
// the task started. A cancelled task must not touch JS-owned memory; it only does its bookkeeping.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace vmseal {

class ThreadPool {
 public:
  using Task = std::function<void(bool cancelled)>;

  explicit ThreadPool(size_t threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Queue tasks (all or none). Returns false, queuing nothing, once Shutdown() has begun.
  // May throw std::system_error if a worker thread cannot be started.
  bool Submit(std::vector<Task> tasks);

  // Change the number of worker threads (>= 1). Shrinking waits for the surplus workers to finish
  // the task they are running.
  void Resize(size_t threads);
  size_t size() const;

  // Stop accepting tasks, let running tasks finish, join the workers, then run every task still
  // queued with cancelled = true on the calling thread. Idempotent.
  void Shutdown();

 private:
  void WorkerLoop(size_t index);
  void StartWorkersLocked();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  std::vector<std::thread> workers_;  // workers_[i] runs WorkerLoop(i)
  size_t target_;                     // desired worker count; workers with index >= target_ exit
  bool stopping_ = false;
};

}  // namespace vmseal
