// Small helpers more than one test file uses.
import { execFileSync } from 'node:child_process';

/** Subscribe and resolve on SUBSCRIBED; reject on an error status (with its error). */
export function subscribed(channel, ms = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('subscribe timeout')), ms);
    channel.subscribe((status, err) => {
      if (status === 'SUBSCRIBED') {
        clearTimeout(t);
        resolve(channel);
      } else if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT') {
        clearTimeout(t);
        reject(err ?? new Error(status));
      }
    });
  });
}

/** The `skip` of a test that needs moto: false when moto_server is installed or under CI
 * (where .ci/run installs it, so its absence is a failure), else the reason. */
export function skipWithoutMoto() {
  try {
    execFileSync('moto_server', ['--help'], { stdio: 'ignore' });
    return false;
  } catch {
    return process.env.CI ? false : 'moto_server not installed (pip install "moto[server]")';
  }
}
