//! The price table (USD per million tokens), seeded from the bundled list of public list
//! prices. Every write bumps every gateway's config version: each node prices the requests it
//! serves.

use chrono::Utc;
use serde::Deserialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use switchyard_model::Price;

use super::audit::{Audit, Change, json};
use super::{Backend, Store, StoreError, ms};

/// The bundled price list: the public list prices of the seeds' models, each with its source
/// and date.
pub const BUNDLED_PRICES: &str = include_str!("../../data/prices.json");

/// One entry of the bundled list.
#[derive(Debug, Deserialize)]
pub struct SeedPrice {
    #[serde(flatten)]
    pub price: Price,
    /// The provider's pricing page.
    pub source: String,
    /// When the price was read there (`YYYY-MM-DD`).
    pub as_of: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    #[serde(rename = "_comment", default)]
    _comment: Option<serde::de::IgnoredAny>,
    prices: Vec<SeedPrice>,
}

/// The bundled list, parsed.
pub fn bundled_prices() -> Result<Vec<SeedPrice>, StoreError> {
    serde_json::from_str::<SeedFile>(BUNDLED_PRICES)
        .map(|f| f.prices)
        .map_err(|e| StoreError::Corrupt(format!("bundled price list: {e}")))
}

fn price_from_row(row: &AnyRow) -> Result<Price, StoreError> {
    Ok(Price {
        model: row.try_get("model")?,
        input_per_mtok: row.try_get("input_per_mtok")?,
        output_per_mtok: row.try_get("output_per_mtok")?,
        cached_input_per_mtok: row.try_get("cached_input_per_mtok")?,
    })
}

impl Store {
    /// The whole price table, by model.
    pub async fn list_prices(&self) -> Result<Vec<Price>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let prices = self.all_prices(&mut tx).await?;
        tx.commit().await?;
        Ok(prices)
    }

    pub async fn get_price(&self, model: &str) -> Result<Option<Price>, StoreError> {
        let row = sqlx::query(
            "SELECT model, input_per_mtok, output_per_mtok, cached_input_per_mtok FROM prices WHERE model = $1",
        )
        .bind(model)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(price_from_row).transpose()
    }

    /// Sets one model's price (`true`: it was new); returns the gateways bumped (all).
    pub async fn put_price(
        &self,
        audit: &Audit,
        price: &Price,
    ) -> Result<(bool, Vec<String>), StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let before = sqlx::query(
            "SELECT model, input_per_mtok, output_per_mtok, cached_input_per_mtok FROM prices WHERE model = $1",
        )
        .bind(&price.model)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(price_from_row)
        .transpose()?;
        let existed = before.is_some();
        sqlx::query(
            "INSERT INTO prices (model, input_per_mtok, output_per_mtok, cached_input_per_mtok, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (model) DO UPDATE SET \
             input_per_mtok = excluded.input_per_mtok, output_per_mtok = excluded.output_per_mtok, \
             cached_input_per_mtok = excluded.cached_input_per_mtok, updated_at = excluded.updated_at",
        )
        .bind(&price.model)
        .bind(price.input_per_mtok)
        .bind(price.output_per_mtok)
        .bind(price.cached_input_per_mtok)
        .bind(ms(Utc::now()))
        .execute(&mut *tx)
        .await?;
        let ids = self.all_gateway_ids(&mut tx).await?;
        let gateways = self.bump_gateways(&mut tx, ids).await?;
        let resource = format!("price/{}", price.model);
        let change = match &before {
            Some(before) => Change::update(resource, json(before)?, json(price)?),
            None => Change::create(resource, json(price)?),
        };
        self.record(&mut tx, audit, change).await?;
        tx.commit().await?;
        Ok((!existed, gateways))
    }

    /// Removes one model's price; returns the gateways bumped (all).
    pub async fn delete_price(
        &self,
        audit: &Audit,
        model: &str,
    ) -> Result<Vec<String>, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        let Some(before) = sqlx::query(
            "SELECT model, input_per_mtok, output_per_mtok, cached_input_per_mtok FROM prices WHERE model = $1",
        )
        .bind(model)
        .fetch_optional(&mut *tx)
        .await?
        .as_ref()
        .map(price_from_row)
        .transpose()?
        else {
            return Err(StoreError::NotFound("price"));
        };
        let res = sqlx::query("DELETE FROM prices WHERE model = $1")
            .bind(model)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound("price"));
        }
        let ids = self.all_gateway_ids(&mut tx).await?;
        let gateways = self.bump_gateways(&mut tx, ids).await?;
        self.record(
            &mut tx,
            audit,
            Change::delete(format!("price/{model}"), json(&before)?),
        )
        .await?;
        tx.commit().await?;
        Ok(gateways)
    }

    /// Seeds the table with the entries of `seed` never seeded before (a model an admin has
    /// priced already keeps the admin's price; one an admin deleted stays deleted). Returns
    /// how many prices were added; when some were, every gateway gets a new version.
    pub async fn seed_prices(&self, seed: &[Price]) -> Result<usize, StoreError> {
        let _guard = self.write_guard().await;
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            // Replicas starting together seed one after the other.
            sqlx::query("LOCK TABLE price_seeds IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let now = ms(Utc::now());
        let mut added = 0;
        for price in seed {
            let seeded = sqlx::query("SELECT model FROM price_seeds WHERE model = $1")
                .bind(&price.model)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if seeded {
                continue;
            }
            sqlx::query("INSERT INTO price_seeds (model, seeded_at) VALUES ($1, $2)")
                .bind(&price.model)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let res = sqlx::query(
                "INSERT INTO prices (model, input_per_mtok, output_per_mtok, cached_input_per_mtok, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (model) DO NOTHING",
            )
            .bind(&price.model)
            .bind(price.input_per_mtok)
            .bind(price.output_per_mtok)
            .bind(price.cached_input_per_mtok)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            added += usize::try_from(res.rows_affected()).unwrap_or(0);
        }
        if added > 0 {
            let ids = self.all_gateway_ids(&mut tx).await?;
            self.bump_gateways(&mut tx, ids).await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// The whole price table, by model (inside a read transaction, such as the snapshot's).
    pub(super) async fn all_prices(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<Vec<Price>, StoreError> {
        let rows = sqlx::query("SELECT model, input_per_mtok, output_per_mtok, cached_input_per_mtok FROM prices ORDER BY model")
            .fetch_all(&mut **tx)
            .await?;
        rows.iter().map(price_from_row).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_list_is_valid_and_sourced() {
        let list = bundled_prices().unwrap();
        assert!(list.len() >= 20, "{}", list.len());
        let mut seen = std::collections::HashSet::new();
        for entry in &list {
            let p = &entry.price;
            assert!(seen.insert(p.model.clone()), "{} twice", p.model);
            // The admin API's own rules.
            let body = serde_json::to_vec(p).unwrap();
            let checked = switchyard_model::governance::parse_price_input(&body)
                .and_then(|input| input.validate(&p.model))
                .unwrap_or_else(|e| panic!("{}: {e:?}", p.model));
            assert_eq!(&checked, p);
            assert!(p.output_per_mtok >= p.input_per_mtok, "{}", p.model);
            if let Some(cached) = p.cached_input_per_mtok {
                assert!(cached <= p.input_per_mtok, "{}", p.model);
            }
            assert!(entry.source.contains("https://"), "{}", p.model);
            assert!(
                chrono::NaiveDate::parse_from_str(&entry.as_of, "%Y-%m-%d").is_ok(),
                "{}",
                p.model
            );
        }
        for model in ["gpt-5", "gpt-4.1", "gemini-2.5-flash", "claude-sonnet-4-5"] {
            assert!(seen.contains(model), "{model} is not in the list");
        }
    }
}
