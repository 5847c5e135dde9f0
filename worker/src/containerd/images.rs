//! Images service: the named image records (`ctr images ls`) that point at a manifest or index in
//! the content store.

use std::collections::HashMap;

use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, UpdateImageRequest,
};
use containerd_client::types::Descriptor;

use super::{Containerd, Error, Result};

impl Containerd {
    /// The image record named `name`, or `None` when there is none.
    pub async fn get_image(&self, name: &str) -> Result<Option<Image>> {
        let res = ImagesClient::new(self.channel())
            .get(self.request(GetImageRequest {
                name: name.to_owned(),
            }))
            .await;
        match res {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(Error::rpc("image get", name, s)),
        }
    }

    /// Points the image `name` at `target` (a manifest or index already in the content store, with
    /// its children reachable through `containerd.io/gc.ref.content.*` labels): creates the
    /// record, or, when it exists, replaces its target and sets `labels` (other labels are kept),
    /// as `ctr images import` does. containerd treats image records as GC roots.
    pub async fn put_image(
        &self,
        name: &str,
        target: Descriptor,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let image = Image {
            name: name.to_owned(),
            labels: labels.clone(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let res = ImagesClient::new(self.channel())
            .create(self.request(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await;
        match res {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => return Err(Error::rpc("image create", name, s)),
        }
        let mut paths = vec!["target".to_owned()];
        paths.extend(labels.keys().map(|k| format!("labels.{k}")));
        ImagesClient::new(self.channel())
            .update(self.request(UpdateImageRequest {
                image: Some(image),
                update_mask: Some(prost_types::FieldMask { paths }),
                source_date_epoch: None,
            }))
            .await
            .map_err(|s| Error::rpc("image update", name, s))?;
        Ok(())
    }

    /// Deletes the image record `name` (its content becomes collectable unless something else
    /// references it). A missing image is not an error.
    pub async fn delete_image(&self, name: &str) -> Result<()> {
        let res = ImagesClient::new(self.channel())
            .delete(self.request(DeleteImageRequest {
                name: name.to_owned(),
                sync: false,
                target: None,
            }))
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(Error::rpc("image delete", name, s)),
        }
    }
}
